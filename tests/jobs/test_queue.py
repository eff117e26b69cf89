"""The queue itself: concurrent claimers never share a job; dead workers' jobs are requeued."""
import threading
from datetime import timedelta

from sqlalchemy import update

from registry import jobs
from registry.models import Job, utcnow


def test_concurrent_claimers_never_share_a_job(services):
    with services.session_factory() as session:
        ids = [jobs.submit_job(session, project="p", kind="train", spec={}, idempotency_key=None,
                               request_sha256="x", max_attempts=3)[0].id for _ in range(30)]
        session.commit()
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def claimer(name):
        while True:
            with services.session_factory() as session:
                job = jobs.claim_next(session, worker_id=name)
                session.commit()
            if job is None:
                return
            with lock:
                claimed.setdefault(job.id, []).append(name)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    assert all(len(workers) == 1 for workers in claimed.values())


def test_stale_jobs_are_requeued_then_failed_after_max_attempts(services):
    with services.session_factory() as session:
        job, _ = jobs.submit_job(session, project="p", kind="train", spec={}, idempotency_key=None,
                                 request_sha256="x", max_attempts=2)
        session.commit()
    for attempt in (1, 2):
        with services.session_factory() as session:
            claimed = jobs.claim_next(session, worker_id=f"dead-{attempt}")
            session.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
            session.commit()
        assert claimed.id == job.id and claimed.attempts == attempt
        with services.session_factory() as session:
            assert jobs.requeue_stale(session, heartbeat_timeout_s=60) == [job.id]
            session.commit()
    with services.session_factory() as session:
        final = jobs.get_job(session, project="p", job_id=job.id)
        assert final.status == "failed" and "gave up after 2 attempts" in final.error
        # a late heartbeat or result from a dead worker is ignored
        assert jobs.heartbeat(session, job_id=job.id, worker_id="dead-2") == (False, False)
        assert not jobs.finish_job(session, job_id=job.id, worker_id="dead-2", status="succeeded")


def test_a_worker_claims_only_jobs_that_fit_its_gpus(services):
    with services.session_factory() as session:
        big, _ = jobs.submit_job(session, project="p", kind="train", spec={}, idempotency_key=None,
                                 request_sha256="x", max_attempts=3, gpus=2)
        small, _ = jobs.submit_job(session, project="p", kind="train", spec={}, idempotency_key=None,
                                   request_sha256="y", max_attempts=3)
        big_id, small_id = big.id, small.id
        session.commit()
    with services.session_factory() as session:  # the older 2-GPU job waits; the 1-GPU worker takes the other
        assert jobs.claim_next(session, worker_id="one-gpu", max_gpus=1).id == small_id
        assert jobs.claim_next(session, worker_id="one-gpu", max_gpus=1) is None
        session.commit()
    with services.session_factory() as session:
        assert jobs.claim_next(session, worker_id="two-gpus", max_gpus=2).id == big_id
        session.commit()


def test_submitted_train_jobs_record_the_gpus_they_need(client, base_model):
    from tests.jobs.helpers import train_spec, upload_dataset

    upload_dataset(client)
    job = client.post("/v1/jobs", json=train_spec(gpus=2)).json()
    with client.app.state.services.session_factory() as session:
        assert session.get(Job, job["id"]).gpus == 2
