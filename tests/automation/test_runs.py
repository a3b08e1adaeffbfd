"""Automation steps as people see them (app.automation.runs): list, show, cancel (issue 10).

Steps are planned by real webhooks and run by a real RQ worker (texts to the Twilio emulator), on SQLite
and PostgreSQL. A second tenant has steps of its own, which no query of the first tenant may see. The
`steps` fixture is shared with the read API and CLI tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.automation import runs, store
from app.core import db
from app.core.db import utcnow
from app.core.models import ActionRun, Interaction
from jobs import automations
from tests.automation.test_automations import (  # noqa: F401  (world and twilio_api are fixtures)
    JORDAN,
    STRANGER,
    World,
    missed_call,
    rules_text,
    twilio_api,
    world,
)
from tests.conftest import make_tenant
from tests.signing import TwilioPoster

OTHER_ACCOUNT = "AC" + "d" * 32
OTHER_TOKEN = "d" * 32
OTHER_NUMBER = "+15555550200"


@dataclass
class Steps:
    """acme: a stranger's missed call whose steps ran, Jordan's whose steps wait an hour; globex: one."""

    world: World
    other_tenant: Any
    stranger_call: int  # interaction ids
    jordan_call: int
    other_call: int

    def ids(self, tenant_id: int, **where: Any) -> list[int]:
        with db.transaction() as s:
            query = select(ActionRun.id).where(ActionRun.tenant_id == tenant_id)
            for name, value in where.items():
                query = query.where(getattr(ActionRun, name) == value)
            return list(s.scalars(query.order_by(ActionRun.id.desc())))

    def step(self, tenant_id: int, rule: str, action: str, state: str) -> int:
        [found] = self.ids(tenant_id, rule=rule, action=action, state=state)
        return found


def _call_id(tenant_id: int, party: str) -> int:
    with db.transaction() as s:
        return s.scalar(  # type: ignore[no-any-return]
            select(Interaction.id).where(
                Interaction.tenant_id == tenant_id,
                Interaction.channel == "call",
                Interaction.party_phone == party,
            )
        )


@pytest.fixture
def steps(world: World) -> Steps:  # noqa: F811
    world.rules(wait="0s", within="1h")
    world.post(missed_call(STRANGER))
    world.run()
    world.rules(wait="1h", within="1h")
    world.post(missed_call(JORDAN))
    world.run()

    other = make_tenant("globex", OTHER_ACCOUNT, OTHER_TOKEN, number=OTHER_NUMBER)
    world.emu.create_account(OTHER_ACCOUNT, OTHER_TOKEN)
    world.emu.add_number(OTHER_ACCOUNT, OTHER_NUMBER)
    store.store_rules(other.id, rules_text(wait="0s", within="1h"))
    poster = TwilioPoster(world.app.test_client(), world.twilio.base_url, OTHER_TOKEN)
    from app.cli import simulate

    call = simulate.inbound_call(OTHER_ACCOUNT, JORDAN, OTHER_NUMBER, "+15555550198", "missed")
    for post in call.deliveries():
        assert poster.post(post.path, post.params).status_code in (200, 204)
    world.run()
    return Steps(
        world,
        other,
        _call_id(world.tenant.id, STRANGER),
        _call_id(world.tenant.id, JORDAN),
        _call_id(other.id, JORDAN),
    )


def test_list_is_newest_first_filtered_and_paged(steps: Steps) -> None:
    acme = steps.world.tenant.id
    everything, cursor = runs.list_steps(acme, limit=200)
    assert cursor is None
    assert [s["id"] for s in everything] == steps.ids(acme)
    assert {(s["rule"], s["action"], s["state"]) for s in everything} == {
        ("missed-call-text", "send_sms", "done"),
        ("missed-call-text", "create_task", "done"),
        ("missed-call-text", "send_sms", "scheduled"),
        ("missed-call-text", "create_task", "scheduled"),
        ("speed-to-lead", "create_task", "scheduled"),  # the stranger became a new lead
    }
    scheduled, _ = runs.list_steps(acme, state="scheduled")
    assert {s["state"] for s in scheduled} == {"scheduled"} and len(scheduled) == 3
    speed, _ = runs.list_steps(acme, rule="speed-to-lead")
    assert [s["rule"] for s in speed] == ["speed-to-lead"]
    assert runs.list_steps(acme, rule="no-such-rule") == ([], None)

    pages, before = [], None
    while True:
        page, before = runs.list_steps(acme, limit=2, before=before)
        pages.append([s["id"] for s in page])
        if before is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == steps.ids(acme)
    with pytest.raises(ValueError, match="state must be one of"):
        runs.list_steps(acme, state="pending")


def test_a_step_as_people_see_it(steps: Steps) -> None:
    acme = steps.world.tenant.id
    sent = runs.show(steps.step(acme, "missed-call-text", "send_sms", "done"))
    assert sent["rule"] == "missed-call-text"
    assert sent["step"] == 2  # 1-based, the wait is step 1 (as the dry run prints it)
    assert sent["action"] == "send_sms" and sent["state"] == "done" and sent["reason"] is None
    assert sent["trigger"] == {
        "kind": "call.missed",
        "ref": f"interaction:{steps.stranger_call}",
        "at": sent["trigger"]["at"],
    }
    assert sent["party"] == {"phone": STRANGER, "email": None}
    assert sent["result"]["sid"].startswith("SM")
    waiting = runs.show(steps.step(acme, "missed-call-text", "send_sms", "scheduled"))
    assert waiting["trigger"]["ref"] == f"interaction:{steps.jordan_call}"
    assert waiting["due_at"] > sent["due_at"]

    with db.transaction() as s:
        planned = runs.steps_for(s, acme, f"interaction:{steps.jordan_call}")
    assert [(p["step"], p["action"], p["state"]) for p in planned] == [
        (2, "send_sms", "scheduled"),
        (3, "create_task", "scheduled"),
    ]


def test_tenants_never_see_each_others_steps(steps: Steps) -> None:
    acme, globex = steps.world.tenant.id, steps.other_tenant.id
    theirs = steps.ids(globex)
    assert theirs and not set(theirs) & set(steps.ids(acme))
    assert {s["id"] for s in runs.list_steps(acme, limit=200)[0]}.isdisjoint(theirs)
    assert {s["id"] for s in runs.list_steps(globex, limit=200)[0]} == set(theirs)
    for run_id in theirs:
        with pytest.raises(runs.StepError, match=f"no automation step {run_id}"):
            runs.show(run_id, acme)
        with pytest.raises(runs.StepError):
            runs.cancel(run_id, "mallory", acme)
    with db.transaction() as s:
        assert runs.steps_for(s, acme, f"interaction:{steps.other_call}") == []
    for missing in (0, -1, 10**30):
        with pytest.raises(runs.StepError):
            runs.show(missing)


def test_a_cancelled_step_never_runs_and_the_others_do(steps: Steps) -> None:
    here, acme = steps.world, steps.world.tenant.id
    text = steps.step(acme, "missed-call-text", "send_sms", "scheduled")
    cancelled = runs.cancel(text, "avery@acme.example", acme)
    assert (cancelled["state"], cancelled["reason"]) == ("canceled", "canceled by avery@acme.example")
    with pytest.raises(runs.StepError, match="is canceled: only a scheduled step can be canceled"):
        runs.cancel(text, "avery@acme.example", acme)

    texts_before = len(here.texts())
    with db.transaction() as s:  # the hour passes: the sweeper re-queues what is due
        s.execute(
            update(ActionRun)
            .where(ActionRun.tenant_id == acme, ActionRun.state == "scheduled")
            .values(due_at=utcnow() - timedelta(minutes=5))
        )
    assert automations.sweep_actions() >= 2
    here.run()
    assert len(here.texts()) == texts_before  # the cancelled text was not sent
    assert runs.show(text)["state"] == "canceled"
    with db.transaction() as s:
        planned = runs.steps_for(s, acme, f"interaction:{steps.jordan_call}")
    assert [(p["action"], p["state"]) for p in planned] == [("send_sms", "canceled"), ("create_task", "done")]
    assert any(t.subject == "Call back Jordan Rivera" for t in here.tasks())


def test_only_a_scheduled_step_can_be_cancelled(steps: Steps) -> None:
    acme = steps.world.tenant.id
    done = steps.step(acme, "missed-call-text", "send_sms", "done")
    with pytest.raises(runs.StepError, match=f"automation step {done} is done"):
        runs.cancel(done, "sam")
    running = steps.step(acme, "speed-to-lead", "create_task", "scheduled")
    with db.transaction() as s:  # a worker claimed it a moment ago
        s.execute(update(ActionRun).where(ActionRun.id == running).values(state="running"))
    with pytest.raises(runs.StepError, match="is running"):
        runs.cancel(running, "sam")
    assert runs.show(running)["reason"] is None


def test_describe_is_one_line(steps: Steps) -> None:
    for step in runs.list_steps(steps.world.tenant.id, limit=200)[0]:
        line = runs.describe(step)
        assert "\n" not in line
        assert line.startswith(f"{step['id']} {step['state']} {step['rule']} step {step['step']} ")
