"""Tie a process's life to its parent's: the kernel sends it a signal when the parent dies (Linux
PR_SET_PDEATHSIG); a no-op elsewhere. Used by the job child (its worker), the torchrun launcher (the job
child) and every rank (torchrun), so a killed worker leaves no process holding GPUs.

The libc handle is looked up at import, so signal_on_parent_death is safe in a preexec_fn (between fork
and exec nothing may be loaded)."""
from __future__ import annotations

import ctypes
import sys

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def signal_on_parent_death(signum: int) -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signum)
