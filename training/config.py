"""What a training run is asked to do, with the defaults of the LoRI paper and "LoRA Without Regret"."""
from __future__ import annotations

from dataclasses import asdict, dataclass

METHODS = ("lora", "lori_d", "lori_s")
A_INITS = ("random", "orthogonal")

# "LoRA Without Regret" (Thinking Machines, 2025) and the Tinker cookbook's fit of it:
#   lr_LoRA(H) = 5e-5 (a full fine-tuning LR) x 10 (LoRA's best LR is ~10x FullFT's) x (2000 / H) ^ 0.781
# (0.781 is their exponent for Llama-family models; it is nearly rank-independent under 1/r scaling).
# LoRI-S trains only ~10% of B's entries and the LoRI reference scripts give it 10x LoRI-D's LR
# (Llama-3-8B r32: 5e-5 for D, 5e-4 for S).
_FULL_FT_LR = 5e-5
_LORA_LR_MULTIPLIER = 10.0
_HIDDEN_REFERENCE = 2000
_HIDDEN_EXPONENT = 0.781
_LORI_S_LR_MULTIPLIER = 10.0


def default_lr(hidden_size: int, method: str) -> float:
    """5e-4 * (2000 / hidden_size) ** 0.781 for lora and lori_d (2.9e-4 at hidden 4096, 1.3e-2 at hidden 32);
    10x that for lori_s.

    Note for lori_d this is ~6x the LoRI reference script's 5e-5 at Llama-3-8B: we follow the LoRA
    recipe for the dense phase, since only B trains and B starts at zero either way.
    """
    lr = _FULL_FT_LR * _LORA_LR_MULTIPLIER * (_HIDDEN_REFERENCE / hidden_size) ** _HIDDEN_EXPONENT
    return lr * _LORI_S_LR_MULTIPLIER if method == "lori_s" else lr


@dataclass
class TrainConfig:
    method: str  # 'lora' | 'lori_d' | 'lori_s'
    rank: int = 16
    alpha: float | None = None  # None: 2 * rank (LoRI default, scale s = 2)
    target_modules: list[str] | None = None  # None: every nn.Linear inside the decoder blocks
    lr: float | None = None  # None: default_lr(hidden_size, method)
    epochs: int = 1
    max_steps: int | None = None  # when set, the run is exactly this many steps (epochs cycle as needed)
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0  # data order, and PEFT's A init for plain LoRA
    a_seed: int | None = None  # LoRI: A = seeded_a(a_seed, module, shape); required for lori_*
    a_init: str = "random"  # LoRI: 'random' (seeded_a) or 'orthogonal' (orthogonal_a)
    basis_seed: int | None = None  # orthogonal A: the shared basis of this base model
    a_offset: int | None = None  # orthogonal A: first basis row given to this adapter
    sparsity: float = 0.9  # lori_d: fraction of B entries the extracted mask zeroes
    mask_path: str | None = None  # lori_s: the lori_masks.safetensors to train under (required)
    checkpoint_every: int = 50
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    compile: str | bool = "auto"  # 'auto': only on CUDA and only when the run is long enough to repay it

    def __post_init__(self):
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method in ("lori_d", "lori_s") and self.a_seed is None:
            problems.append(f"{self.method} needs a_seed (A is regenerated from it)")
        if self.method == "lori_s" and not self.mask_path:
            problems.append("lori_s needs mask_path (the lori_masks.safetensors of a lori_d run)")
        if self.a_init not in A_INITS:
            problems.append(f"a_init must be one of {', '.join(A_INITS)}, got {self.a_init!r}")
        if self.a_init == "orthogonal" and (self.basis_seed is None or self.a_offset is None):
            problems.append("a_init 'orthogonal' needs basis_seed and a_offset")
        if self.a_init == "orthogonal" and self.method == "lora":
            problems.append("a_init 'orthogonal' is for LoRI (A frozen); plain lora trains A")
        if not 0.0 <= self.sparsity < 1.0:
            problems.append(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.compile not in ("auto", True, False):
            problems.append(f"compile must be 'auto', true or false, got {self.compile!r}")
        for name in ("rank", "epochs", "batch_size", "max_length", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2 * self.rank

    def to_dict(self) -> dict:
        return asdict(self)
