"""Jobs outlive deploys: RQ stores a job's function as a dotted path, so every name the core enqueues and
every old path kept as an alias must still import and run in a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.utils import import_attribute

from app.core.queue import JOBS, enqueue


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_named_job_imports(name: str) -> None:
    assert callable(import_attribute(JOBS[name]))


@pytest.mark.parametrize(
    "old_path",
    ["jobs.hubspot.setup_portal", "jobs.sync.log_interaction", "jobs.automations.on_interaction"],
)
def test_job_paths_stored_before_the_reshape_still_import(old_path: str) -> None:
    assert callable(import_attribute(old_path))


def test_a_job_queued_under_the_old_hubspot_path_runs(
    app: Any, settings: Any, redis_conn: Redis, run_worker: Any
) -> None:
    # What an older release left in Redis: the pre-0.2 dotted path, for a tenant that is gone by now.
    job = Queue(settings.queue_name, connection=redis_conn).enqueue("jobs.hubspot.setup_portal", 999_999)
    run_worker()
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == []


def test_named_jobs_enqueue_by_name(app: Any, settings: Any, redis_conn: Redis, run_worker: Any) -> None:
    assert enqueue(settings, "sync", 123456, job_id="sync-123456", unique=True)
    assert not enqueue(settings, "sync", 123456, job_id="sync-123456", unique=True)  # deduplicated
    run_worker()
    job = Queue(settings.queue_name, connection=redis_conn).fetch_job("sync-123456")
    assert job is not None and job.func_name == "jobs.sync.log_interaction"
    assert job.return_value() == "gone"
