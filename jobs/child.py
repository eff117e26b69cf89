"""The spawned child that runs a job's compute (torch, CUDA). Spawned, never forked: forking a process
that has touched CUDA breaks it, and a fresh interpreter keeps the worker itself torch-free."""
from __future__ import annotations

import os
import signal
import traceback

from training.parent_death import signal_on_parent_death


def child_main(kind: str, task: dict, events, stop, gpus: str | None) -> None:
    signal_on_parent_death(signal.SIGKILL)  # worker SIGKILLed: so are we (elsewhere should_stop polls getppid)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # before anything imports torch
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from registered local folders, never a hub
    from jobs.handlers import HANDLERS

    parent = os.getppid()

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != parent

    try:
        output = HANDLERS[kind].compute(task, events.put, should_stop)
        events.put({"type": "_result", "output": output})
    except Exception as e:
        if type(e).__name__ == "TrainingStopped":
            events.put({"type": "_stopped", "message": str(e)})
        else:
            events.put({"type": "_error", "message": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc(limit=20)})
