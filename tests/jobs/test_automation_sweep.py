"""The automations after Redis loses data: the per-interaction marker ("automations saw version N") and
the step jobs under fixed ids let the sweep restore what a FLUSHALL took, at once and exactly once.

Real webhooks into the app, a real RQ worker (in this process) on the test Redis, both databases. "Redis
lost its data" is every key of the test's Redis database deleted (the shared server is never flushed).
"""

# ruff: noqa: F811 -- twilio_api is the automation tests' session fixture, imported for pytest to find
from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select, update

from app.cli import simulate
from app.core import db, queue
from app.core.db import utcnow
from app.core.models import ActionRun, Interaction, RuleSet
from jobs import automations
from jobs.sync import drain
from tests.automation.test_automations import OUR, make_world, twilio_api  # noqa: F401 (a fixture)
from tests.conftest import _flush, count
from tests.signing import FIXTURE_ACCOUNT

RULES = """
rules:
  - name: pricing-follow-up
    trigger: sms.inbound
    when: {keywords: [pricing]}
    actions:
      - wait: WAIT
      - create_task: {subject: "Pricing question from {{ contact.name }}", due_in: 1h}
"""


def _world(twilio_api: Any, settings: Any, tenant: Any, redis_conn: Any, run_worker: Any, wait: str) -> Any:
    return make_world(twilio_api, settings, tenant, redis_conn, run_worker, rules=RULES.replace("WAIT", wait))


def _texts(world: Any, n: int) -> None:
    for i in range(n):
        sender = f"+1555201{i:04d}"
        world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, sender, OUR, f"pricing please ({i})"))


def _age_rows(seconds: float = 10) -> None:
    """As if the webhooks came `seconds` ago (the sweep leaves the newest rows to their own jobs)."""
    with db.transaction() as s:
        s.execute(update(Interaction).values(updated_at=utcnow() - timedelta(seconds=seconds)))


def _steps() -> list[ActionRun]:
    with db.transaction() as s:
        return list(s.scalars(select(ActionRun).where(ActionRun.action != "wait").order_by(ActionRun.id)))


def _step_jobs(registry: ScheduledJobRegistry) -> list[str]:
    return [j for j in registry.get_job_ids() if j.startswith("step-")]


def _unseen() -> int:
    return count(Interaction, Interaction.automations_version < Interaction.version)


def test_flushall_with_interactions_recorded_but_not_planned_plans_each_once(
    twilio_api, settings, tenant, redis_conn, run_worker
):
    world = _world(twilio_api, settings, tenant, redis_conn, run_worker, "1h")
    _texts(world, 12)
    assert _unseen() == 12
    _flush(redis_conn)  # Redis lost every queued job: the sync triggers and the automation jobs
    drain(tenant.id)  # the sync sweep's part (tested elsewhere): the contacts are matched
    assert automations.sweep_interactions() == 0  # too recent: their own jobs may still run
    _age_rows()
    assert automations.sweep_interactions() == 12
    assert automations.sweep_interactions() == 0  # queued already: nothing twice
    world.run()
    assert _unseen() == 0
    steps = _steps()
    assert len(steps) == 12 and len({s.trigger_ref for s in steps}) == 12
    assert {s.state for s in steps} == {"scheduled"}
    _age_rows()
    assert automations.sweep_interactions() == 0  # the marker says they were seen
    with db.transaction() as s:
        first = s.scalar(select(Interaction.id).order_by(Interaction.id))
    assert automations.on_interaction(first) == "planned 0"  # a late duplicate of the lost job
    assert len(_steps()) == 12


def test_the_marker_follows_the_newest_version_and_tenants_without_rules_are_marked_seen(
    twilio_api, settings, tenant, redis_conn, run_worker
):
    world = _world(twilio_api, settings, tenant, redis_conn, run_worker, "1h")
    _texts(world, 1)
    world.run()
    with db.transaction() as s:
        row = s.scalars(select(Interaction)).one()
        assert row.automations_version == row.version == 1
        s.execute(update(Interaction).values(version=2))  # a status callback whose job Redis lost
    _age_rows()
    assert automations.sweep_interactions() == 1
    world.run()
    assert _unseen() == 0 and len(_steps()) == 1  # seen at version 2, still one step

    with db.transaction() as s:  # a tenant without rules: nothing to plan, the sweep only marks its rows
        s.execute(RuleSet.__table__.delete())
        s.execute(update(Interaction).values(version=3))
    _age_rows()
    assert automations.sweep_interactions() == 0
    assert _unseen() == 0 and Queue(settings.queue_name, connection=redis_conn).count == 0
    assert len(_steps()) == 1


def test_a_call_waiting_to_settle_is_left_to_its_delayed_look_until_redis_loses_it(
    twilio_api, settings, tenant, redis_conn, run_worker
):
    world = _world(twilio_api, settings, tenant, redis_conn, run_worker, "1h")
    _texts(world, 1)
    _flush(redis_conn)
    with db.transaction() as s:
        row_id = s.scalar(select(Interaction.id))
    # the contact is not matched yet: the automations look again in a few seconds
    assert automations.on_interaction(row_id) == "waiting for the contact match"
    assert redis_conn.exists(queue.automation_wait_key(row_id))
    _age_rows()
    assert automations.sweep_interactions() == 0  # its delayed look will come
    _flush(redis_conn)  # ...unless Redis loses it too
    assert automations.sweep_interactions() == 1


def test_the_sync_wakes_the_automations_waiting_for_its_contact_match(
    twilio_api, settings, tenant, redis_conn, run_worker
):
    world = _world(twilio_api, settings, tenant, redis_conn, run_worker, "1h")
    _texts(world, 1)
    _flush(redis_conn)
    with db.transaction() as s:
        row_id = s.scalar(select(Interaction.id))
    assert automations.on_interaction(row_id) == "waiting for the contact match"  # its look: in 5 s
    q = Queue(settings.queue_name, connection=redis_conn)
    q.enqueue("operator.add", 1, 2)  # a webhook's job
    drain(tenant.id)
    assert q.job_ids[0] == f"auto-{row_id}"  # at once, ahead of the queue, not at its next look
    run_worker()
    assert len(_steps()) == 1 and _unseen() == 0


def test_a_lost_scheduled_step_is_restored_at_once_under_its_fixed_id(
    twilio_api, settings, tenant, redis_conn, run_worker
):
    world = _world(twilio_api, settings, tenant, redis_conn, run_worker, "2s")
    _texts(world, 1)
    world.run()
    [step] = _steps()
    job_id = automations.step_job_id(step.id, 0, step.due_at)
    scheduled = ScheduledJobRegistry(settings.queue_name, connection=redis_conn)
    assert _step_jobs(scheduled) == [job_id]
    assert automations.sweep_actions() == 0  # waits already: never a second job

    _flush(redis_conn)
    assert automations.sweep_actions() == 1  # restored at once, not after a grace period
    assert automations.sweep_actions() == 0
    assert _step_jobs(scheduled) == [job_id]
    assert int(scheduled.get_expiration_time(Job.fetch(job_id, connection=redis_conn)).timestamp()) >= int(
        step.due_at.timestamp()
    )  # at its due time, not before

    # a finished record under the id (a job that ran, found the step not due yet and left) never blocks
    redis_conn.zrem(scheduled.key, job_id)
    redis_conn.hset(f"rq:job:{job_id}", "status", "finished")
    assert automations.sweep_actions() == 1
    assert Job.fetch(job_id, connection=redis_conn).get_status() == "scheduled"

    time.sleep(max(0.0, step.due_at.timestamp() + 1 - time.time()))
    world.run()
    [step] = _steps()
    assert step.state == "done" and len(world.tasks()) == 1
    assert automations.sweep_actions() == 0


def test_an_overdue_step_no_scheduler_moved_is_queued_by_the_sweep(
    twilio_api, settings, tenant, redis_conn, run_worker
):
    """The scheduler's holder was killed and its lease has not run out: the sweep queues the step itself."""
    world = _world(twilio_api, settings, tenant, redis_conn, run_worker, "1h")
    _texts(world, 1)
    world.run()
    _flush(redis_conn)
    [step] = _steps()
    q = Queue(settings.queue_name, connection=redis_conn)
    q.enqueue("operator.add", 1, 2)  # a webhook's job: a due step goes ahead of it
    for late in (2, queue.OVERDUE + 2):  # what a scheduler that stopped moving jobs leaves behind
        due = utcnow().replace(microsecond=0) - timedelta(seconds=late)
        with db.transaction() as s:
            s.execute(update(ActionRun).values(due_at=due))
        job_id = automations.step_job_id(step.id, 0, due)
        q.enqueue_at(due, automations.run_action, step.id, job_id=job_id, at_front=True)
        # 2 s late: a live scheduler is on it; OVERDUE s late: nobody is
        assert automations.sweep_actions() == (0 if late == 2 else 1)
    assert q.job_ids[0] == automations.step_job_id(step.id, 0, due) and len(q.job_ids) == 2
    run_worker()
    assert _steps()[0].state == "done" and len(world.tasks()) == 1


@pytest.mark.parametrize("trial", range(3))
def test_a_re_plan_racing_the_first_plan_makes_one_step(
    twilio_api, settings, tenant, redis_conn, run_worker, trial
):
    world = _world(twilio_api, settings, tenant, redis_conn, run_worker, "1h")
    _texts(world, 1)
    _flush(redis_conn)
    drain(tenant.id)
    with db.transaction() as s:
        row_id = s.scalar(select(Interaction.id))
    start, outcomes = threading.Barrier(2), []

    def plan() -> None:
        start.wait()
        outcomes.append(automations.on_interaction(row_id))

    threads = [threading.Thread(target=plan) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["planned 0", "planned 1"]
    [step] = _steps()
    assert _unseen() == 0
    # one job for the step, under its id, however many plans raced
    scheduled = ScheduledJobRegistry(settings.queue_name, connection=redis_conn)
    assert _step_jobs(scheduled) == [automations.step_job_id(step.id, 0, step.due_at)]
