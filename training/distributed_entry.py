"""One rank of a distributed training run; torchrun starts one per GPU (training/distributed.py builds the
command):

    python -m torch.distributed.run --standalone --nproc_per_node N -m training.distributed_entry task.json

task.json: {"config": TrainConfig fields, "base_model_dir", "dataset_path", "out_dir", "checkpoint_dir",
            "events_path", "stop_path", "status_path", "backend": "nccl" | "gloo" | null}
Every rank runs recipe.train_process. Rank 0 alone appends the run's events to events_path (one JSON object
a line), watches for stop_path, writes checkpoints and the adapter, and at the end writes status_path:
{"status": "finished", "metrics": {...}} or {"status": "stopped", "message": ...}. A rank that fails
writes {"status": "failed", "rank", "error", "traceback"} to status_path + ".rank<N>" and exits non-zero
(torchrun then stops the other ranks).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

from training.parent_death import signal_on_parent_death


def write_json(path: Path, data: dict) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(task_path: str) -> int:
    signal_on_parent_death(signal.SIGKILL)  # torchrun runs each rank in its own session: SIGKILLed with it
    task = json.loads(Path(task_path).read_text())
    status_path = Path(task["status_path"])
    rank = int(os.environ.get("RANK", 0))
    try:
        status = run_rank(task)
    except Exception as e:
        write_json(status_path.with_name(f"{status_path.name}.rank{rank}"),
                   {"status": "failed", "rank": rank, "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=20)})
        raise  # a non-zero exit: torchrun stops the other ranks
    if status is not None:
        write_json(status_path, status)
    return 0


def run_rank(task: dict) -> dict | None:
    """Train as this rank; the run's status on rank 0, None on the others."""
    from training.config import TrainConfig
    from training.parallel import Ranks
    from training.recipe import TrainingStopped, train_process

    dist = Ranks(task.get("backend"))
    on_event = should_stop = None
    if dist.is_main:
        events = open(task["events_path"], "a", encoding="utf-8")
        stop_path = Path(task["stop_path"])

        def on_event(event: dict) -> None:
            events.write(json.dumps(event) + "\n")
            events.flush()  # the launcher tails this file

        def should_stop() -> bool:
            return stop_path.exists()
    try:
        result = train_process(
            TrainConfig(**task["config"]), dist=dist, base_model_dir=task["base_model_dir"],
            dataset_path=task["dataset_path"], out_dir=task["out_dir"], checkpoint_dir=task["checkpoint_dir"],
            on_event=on_event, should_stop=should_stop)
        status = {"status": "finished", "metrics": result.metrics}
    except TrainingStopped as e:  # every rank stops after the same step; rank 0 checkpointed it
        status = {"status": "stopped", "message": str(e)}
    # Only on success: after a failure, peers may still sit in a collective that would never return.
    dist.close()
    return status if dist.is_main else None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m torch.distributed.run ... -m training.distributed_entry TASK.json "
                 f"(got {sys.argv[1:]})")
    sys.exit(main(sys.argv[1]))
