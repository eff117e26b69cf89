"""The worker loop: claim a job, run its compute in a spawned child, heartbeat, relay events, finish.

One worker per GPU (or GPU group, via `gpus`). The loop holds no transaction while a job runs; each
heartbeat, event batch and state change is its own short transaction.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import shutil
import socket
import threading
import time
import uuid

from jobs.child import child_main
from jobs.handlers import HANDLERS
from jobs.handlers.base import WorkerContext
from jobs.handlers.results import JobLost
from registry import jobs, uploads
from registry.models import Job

log = logging.getLogger("lorifold.worker")
CANCEL_GRACE_S = 10.0  # a child that does not stop between steps within this is killed
EVENT_FLUSH_S = 0.5


class Worker:
    def __init__(self, ctx: WorkerContext, *, worker_id: str | None = None, gpus: str | None = None):
        self.ctx = ctx
        self.settings = ctx.settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.gpus = gpus if gpus is not None else self.settings.worker_gpus

    def run(self, stop: threading.Event) -> None:
        log.info("worker %s started (gpus=%s)", self.worker_id, self.gpus)
        while not stop.is_set():
            try:
                if self.run_once() is None:
                    stop.wait(self.settings.poll_interval_s)
            except Exception:  # keep serving other jobs; the failure is already recorded on the job
                log.exception("worker loop error")
                stop.wait(self.settings.poll_interval_s)

    def run_once(self) -> str | None:
        """Claim one job and run it to the end; None when the queue is empty."""
        with self.ctx.session_factory() as session:
            jobs.requeue_stale(session, heartbeat_timeout_s=self.settings.heartbeat_timeout_s)
            uploads.expire_uploads(session, self.ctx.store)
            session.commit()
        with self.ctx.session_factory() as session:
            job = jobs.claim_next(session, worker_id=self.worker_id, kinds=tuple(HANDLERS),
                                  max_gpus=len(self.gpus.split(",")) if self.gpus else None)
            session.commit()
        if job is None:
            return None
        self._execute(job)
        return job.id

    def _execute(self, job: Job) -> None:
        handler = HANDLERS[job.kind]
        try:
            task = handler.prepare(self.ctx, job)
        except Exception as e:
            self._finish(job, "failed", error=f"could not prepare the job: {type(e).__name__}: {e}")
            return
        outcome, payload = self._run_child(job, task)
        stored = False
        if outcome == "result":
            try:
                handler.finalize(self.ctx, job, task, payload, self.worker_id)
                stored = True
            except JobLost as e:
                log.warning("%s", e)
                return
            except Exception as e:
                self._finish(job, "failed", error=f"could not store the result: {type(e).__name__}: {e}")
        elif outcome == "stopped":
            self._finish(job, "cancelled", error="cancelled while running")
        elif outcome == "error":
            self._finish(job, "failed", error=payload)
        if outcome != "lost":
            # an export's output is kept only for a job that succeeded: nobody can download a failed one's
            self._clean_job_dir(job.id, keep_output=handler.keeps_output and stored)

    def _run_child(self, job: Job, task: dict) -> tuple[str, object]:
        """Returns ("result", output) | ("stopped", None) | ("error", message) | ("lost", None)."""
        mp_ctx = mp.get_context("spawn")
        events, stop = mp_ctx.Queue(), mp_ctx.Event()
        child = mp_ctx.Process(target=child_main, args=(job.kind, task, events, stop, self.gpus), daemon=True,
                               name=f"lorifold-{job.id}")
        child.start()
        pending: list[dict] = []
        outcome: tuple[str, object] | None = None
        last_flush = last_beat = time.monotonic()
        cancel_since: float | None = None
        try:
            def take(event: dict) -> None:
                nonlocal outcome
                if event["type"] == "_result":
                    outcome = ("result", event["output"])
                elif event["type"] == "_stopped":
                    outcome = ("stopped", None)
                elif event["type"] == "_error":
                    pending.append({"type": "log", "message": event["traceback"]})
                    outcome = ("error", event["message"])
                else:
                    pending.append(event)

            while True:
                try:
                    take(events.get(timeout=0.2))
                except queue.Empty:
                    if not child.is_alive():
                        # it may have put its last events between the timeout and the exit: drain them
                        while True:
                            try:
                                take(events.get(timeout=0.2))
                            except queue.Empty:
                                break
                        break
                now = time.monotonic()
                if pending and (now - last_flush > EVENT_FLUSH_S or outcome):
                    self._write_events(job.id, pending)
                    pending, last_flush = [], now
                if now - last_beat > self.settings.heartbeat_s:
                    last_beat = now
                    with self.ctx.session_factory() as session:
                        ours, cancel = jobs.heartbeat(session, job_id=job.id, worker_id=self.worker_id)
                        session.commit()
                    if not ours:
                        child.kill()
                        return "lost", None
                    if cancel and cancel_since is None:
                        stop.set()
                        cancel_since = now
                if cancel_since is not None and now - cancel_since > CANCEL_GRACE_S and child.is_alive():
                    child.kill()
                    outcome = ("stopped", None)
                    break
        finally:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
            if pending:
                self._write_events(job.id, pending)
        if outcome is None:
            return "error", f"the job's process exited with code {child.exitcode} without a result"
        return outcome

    def _clean_job_dir(self, job_id: str, *, keep_output: bool) -> None:
        job_dir = self.ctx.store.job_dir(job_id)
        if not keep_output:
            shutil.rmtree(job_dir, ignore_errors=True)
            return
        for child in job_dir.iterdir() if job_dir.exists() else ():
            if child.name != "out":
                shutil.rmtree(child, ignore_errors=True)

    def _write_events(self, job_id: str, events: list[dict]) -> None:
        with self.ctx.session_factory() as session:
            for event in events:
                data = {k: v for k, v in event.items() if k != "type"}
                jobs.add_event(session, job_id=job_id, type=event.get("type", "log"), data=data)
            session.commit()

    def _finish(self, job: Job, status: str, *, error: str | None = None) -> None:
        with self.ctx.session_factory() as session:
            jobs.finish_job(session, job_id=job.id, worker_id=self.worker_id, status=status, error=error)
            session.commit()
