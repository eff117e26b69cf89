"""The adapter file format: PEFT-compatible safetensors + adapter_config.json + optional LoRI masks.

Everything here except `tensors.py` is plain Python (json + struct) so the API process can validate
uploads without importing torch.
"""
