"""AdamW over the trainable adapter weights, with fp32 master copies and LoRI-S gradient masks.

Why master copies: on the GPU the adapters live in bf16 inside the model (no fp32 upcast of
activations), but bf16 has 8 bits of mantissa, so small AdamW updates would round away. The optimizer
updates fp32 masters and copies them into the model after each step. On the CPU the model is fp32 and
the masters are the parameters themselves.

Why masks in the step: LoRI-S (like the reference code) masks B's gradients before AdamW, so entries
outside the mask get zero gradient and, starting from B = 0, stay zero. The masters are multiplied by
the mask after every step as well, so no numerical path (weight decay, eps, fused kernels) can leave a
non-zero there: B is exactly zero outside the mask at every step.
"""
from __future__ import annotations

import torch
from torch import nn


class AdapterOptimizer:
    def __init__(self, weights: dict[str, nn.Parameter], *, lr: float, weight_decay: float, grad_clip: float,
                 masks: dict[str, torch.Tensor] | None = None):
        """weights: {PEFT key: parameter in the model}; masks: {lora_B key: bool [out, r]} (LoRI-S)."""
        self.names = list(weights)
        self.params = [weights[k] for k in self.names]
        # masters[i] is params[i] when that is already fp32, else an fp32 copy: [out, r] / [r, in].
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone() for p in self.params]
        # (master, mask as 0./1. float on its device) for every masked weight.
        self.masked: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k, master in zip(self.names, self.masters):
            if masks is None or not k.endswith("lora_B.weight"):
                continue
            if k not in masks or masks[k].shape != master.shape:
                raise ValueError(f"the mask has no entry of shape {tuple(master.shape)} for {k}")
            self.masked.append((master, masks[k].to(device=master.device, dtype=torch.float32)))
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(self.masters, lr=lr, weight_decay=weight_decay)
        self._mask_and_publish()

    def step(self) -> None:
        """Gradients (accumulated in the model's params) -> masked, clipped AdamW step on the masters."""
        for p, master in zip(self.params, self.masters):
            if master is not p:
                master.grad = None if p.grad is None else p.grad.float()
                p.grad = None
        if self.masked:
            torch._foreach_mul_([m.grad for m, _ in self.masked], [mask for _, mask in self.masked])
        # A non-finite norm raises here, before it could turn the weights into NaN.
        torch.nn.utils.clip_grad_norm_(self.masters, self.grad_clip, error_if_nonfinite=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._mask_and_publish()

    @torch.no_grad()
    def _mask_and_publish(self) -> None:
        """Zero the masters outside their masks, then copy the masters into the model's (bf16) params."""
        if self.masked:
            torch._foreach_mul_([m for m, _ in self.masked], [mask for _, mask in self.masked])
        copies = [(p, m) for p, m in zip(self.params, self.masters) if p is not m]
        if copies:
            torch._foreach_copy_([p for p, _ in copies], [m for _, m in copies])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Masters and AdamW state flattened for safetensors: {key: master, "key.<state>": tensor}."""
        out = {k: m.detach() for k, m in zip(self.names, self.masters)}
        for i, state in self.optimizer.state_dict()["state"].items():
            for field, value in state.items():
                out[f"{self.names[i]}.{field}"] = torch.as_tensor(value)
        return out

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of state_tensors: restores masters (and the model's params) and the AdamW state."""
        for k, master in zip(self.names, self.masters):
            if k not in tensors or tensors[k].shape != master.shape:
                raise ValueError(f"checkpoint does not match this adapter: {k} missing or of another shape")
            master.copy_(tensors[k])
        state = {}
        for i, k in enumerate(self.names):
            fields = {key[len(k) + 1:]: t for key, t in tensors.items() if key.startswith(k + ".")}
            if fields:
                state[i] = fields
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        self._mask_and_publish()
