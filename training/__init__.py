"""LoRA / LoRI training: frozen seeded A, masks, data loading and the training recipe. No database.

Public API (the jobs layer calls these):
  training.recipe    TrainConfig, default_lr, run_training, TrainResult, TrainingStopped
  training.distributed  run_training_distributed: the same run on several GPUs of one host (torchrun, DDP)
  training.lori_a    seeded_a, orthogonal_a, orthogonal_capacity, CapacityError
  training.masks     extract_lori_mask, save_masks, load_masks
  training.data      load_examples, tokenize_row, collate
Internals, one job each: config, model_setup (PEFT injection), step (chunked loss + train_step),
optim (fp32 masters + masked AdamW), checkpoint, export, parallel (how a process takes part in a run: alone
or as a torch.distributed rank), distributed_entry (the module torchrun starts once per rank).
"""
