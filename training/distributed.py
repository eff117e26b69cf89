"""Multi-GPU training on one host: the run_training of a job that asks for several GPUs.

run_training_distributed starts torch's own launcher (torchrun) as a subprocess,

    python -m torch.distributed.run --standalone --nproc_per_node N -m training.distributed_entry task.json

which starts N ranks of training/distributed_entry.py (NCCL on cuda:LOCAL_RANK, or gloo on the CPU); they
run the same loop as run_training (recipe.train_process) with DDP over the adapters (training/parallel.py).
This process talks to rank 0 through files in a scratch folder: it tails the events file and forwards each
event to on_event, turns should_stop() into the stop file (rank 0 checks it between steps and every rank
stops after the same step, checkpointed first), and reads the final status. Checkpoints, resume and the
adapter folder are those of run_training, so a job can resume on another number of GPUs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from training.config import TrainConfig
from training.parent_death import signal_on_parent_death
from training.recipe import TrainingStopped, TrainResult

STOP_GRACE_S = 30.0  # a run that has not stopped this long after the stop request is killed
POLL_S = 0.1
_REPO_ROOT = Path(__file__).resolve().parents[1]  # so the ranks import this checkout's `training`


def run_training_distributed(config: TrainConfig, *, world_size: int, base_model_dir, dataset_path, out_dir,
                             checkpoint_dir, on_event: Callable[[dict], None] | None = None,
                             should_stop: Callable[[], bool] | None = None,
                             backend: str | None = None) -> TrainResult:
    """Train on world_size processes of this host (one per visible GPU, or CPU processes where there is no
    CUDA); same result, events, checkpoints and TrainingStopped as run_training. backend: None picks nccl
    when CUDA is available, else gloo."""
    emit = on_event or (lambda event: None)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if config.batch_size < world_size:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {world_size} GPUs asked for: "
                         "each GPU trains on its share of every batch")
    if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        raise ValueError(f"the job asks for {world_size} GPUs but this worker sees {torch.cuda.device_count()} "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); run it on a worker "
                         f"given at least {world_size} GPUs, or ask for fewer")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")

    with tempfile.TemporaryDirectory(prefix="lorifold-ddp-") as scratch:
        scratch = Path(scratch)
        events_path, stop_path, status_path = scratch / "events.jsonl", scratch / "stop", scratch / "status.json"
        task = {"config": config.to_dict(), "base_model_dir": str(base_model_dir), "dataset_path": str(dataset_path),
                "out_dir": str(out_dir), "checkpoint_dir": str(checkpoint_dir), "backend": backend,
                "events_path": str(events_path), "stop_path": str(stop_path), "status_path": str(status_path)}
        (scratch / "task.json").write_text(json.dumps(task))
        events_path.touch()
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
                   "-m", "training.distributed_entry", str(scratch / "task.json")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        emit({"type": "log", "message": f"starting {world_size} training processes ({backend}) with torchrun"})
        with open(scratch / "launcher.log", "wb") as launcher_log:
            process = subprocess.Popen(command, env=env, stdout=launcher_log, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=_terminate_with_parent)
            try:
                killed_after_stop = _follow(process, events_path, stop_path, emit, should_stop)
            finally:
                if process.poll() is None:  # on_event or should_stop raised: take the run down with us
                    _kill(process)
        return _outcome(process, scratch, killed_after_stop, out_dir)


def _follow(process: subprocess.Popen, events_path: Path, stop_path: Path, emit, should_stop) -> bool:
    """Forward events until the launcher exits; True when it had to be killed after a stop request."""
    stop_asked_at = None
    with open(events_path, encoding="utf-8") as events:
        pending = ""
        while True:
            running = process.poll() is None  # read after this, so no event written before the exit is missed
            pending += events.read()
            *lines, pending = pending.split("\n")  # the last piece may be a line still being written
            for line in lines:
                emit(json.loads(line))
            if not running:
                return False
            if stop_asked_at is None and should_stop is not None and should_stop():
                stop_path.touch()
                stop_asked_at = time.monotonic()
                emit({"type": "log", "message": "stop requested: the ranks stop after the current step"})
            elif stop_asked_at is not None and time.monotonic() - stop_asked_at > STOP_GRACE_S:
                emit({"type": "log", "message": f"the ranks did not stop within {STOP_GRACE_S:.0f} s; killed"})
                _kill(process)
                return True
            time.sleep(POLL_S)


def _outcome(process: subprocess.Popen, scratch: Path, killed_after_stop: bool, out_dir) -> TrainResult:
    """The run's TrainResult, or the TrainingStopped / RuntimeError it ended with."""
    status_path = scratch / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else None
    if status is not None and status["status"] == "finished":
        return TrainResult(out_dir=Path(out_dir), metrics=status["metrics"])
    if status is not None and status["status"] == "stopped":
        raise TrainingStopped(status["message"])
    if killed_after_stop:
        raise TrainingStopped("stopped: the training processes were killed (the last checkpoint is kept)")
    failures = sorted(scratch.glob("status.json.rank*"), key=lambda p: int(p.name.rsplit("rank", 1)[1]))
    if failures:
        failure = json.loads(failures[0].read_text())
        raise RuntimeError(f"distributed training failed on rank {failure['rank']}: {failure['error']}\n"
                           f"{failure['traceback']}")
    tail = (scratch / "launcher.log").read_text(errors="replace")[-4000:]
    raise RuntimeError(f"distributed training exited with code {process.returncode} without a result; "
                       f"torchrun's output ends with:\n{tail}")


def _kill(process: subprocess.Popen) -> None:
    """SIGTERM to torchrun's process group (torchrun then terminates its ranks), SIGKILL if that hangs; a
    rank whose torchrun is gone kills itself (distributed_entry sets its parent-death signal)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _terminate_with_parent() -> None:
    """In the launcher, before exec: SIGTERM it when this process dies (a cancelled job's child is killed
    by its worker), so no orphaned torchrun keeps the GPUs training."""
    signal_on_parent_death(signal.SIGTERM)
