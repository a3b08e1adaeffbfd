"""`switchboard automations list|show|cancel` (app/cli/automations.py), invoked on its own group.

Steps come from real webhooks and a real RQ worker (tests/automation/test_runs.py's `steps` fixture);
SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from app.cli.automations import group
from app.core import db
from app.core.db import utcnow
from app.core.models import ActionRun
from jobs import automations
from tests.automation.test_runs import (  # noqa: F401  (fixtures: steps, world, twilio_api)
    JORDAN,
    STRANGER,
    Steps,
    steps,
    twilio_api,
    world,
)


def invoke(steps: Steps, *args: str) -> Any:  # noqa: F811  (a parameter named like the fixture)
    return steps.world.app.test_cli_runner().invoke(group, args=list(args))


def test_list_prints_one_line_per_step_newest_first(steps: Steps) -> None:  # noqa: F811
    acme = steps.world.tenant.id
    result = invoke(steps, "list", "acme")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [int(line.split()[0]) for line in lines] == steps.ids(acme)
    waiting = steps.step(acme, "missed-call-text", "send_sms", "scheduled")
    [line] = [x for x in lines if x.startswith(f"{waiting} ")]
    assert line.startswith(f"{waiting} scheduled missed-call-text step 2 send_sms due ")
    assert f"call.missed interaction:{steps.jordan_call} {JORDAN}" in line
    done = steps.step(acme, "missed-call-text", "create_task", "done")
    [line] = [x for x in lines if x.startswith(f"{done} ")]
    assert line.endswith(f"{STRANGER}: assigned to the contact's owner")


def test_list_filters_by_state_and_rule(steps: Steps) -> None:  # noqa: F811
    scheduled = invoke(steps, "list", "acme", "--state", "scheduled").output.splitlines()
    assert len(scheduled) == 3 and all(line.split()[1] == "scheduled" for line in scheduled)
    speed = invoke(steps, "list", "acme", "--rule", "speed-to-lead").output.splitlines()
    assert [line.split()[2] for line in speed] == ["speed-to-lead"]
    assert invoke(steps, "list", "acme", "--rule", "nope").output == "no automation steps\n"
    assert len(invoke(steps, "list", "acme", "--limit", "2").output.splitlines()) == 2
    # the other tenant's steps are its own
    theirs = invoke(steps, "list", "globex").output.splitlines()
    assert [int(line.split()[0]) for line in theirs] == steps.ids(steps.other_tenant.id)


def test_list_errors_are_one_line(steps: Steps) -> None:  # noqa: F811
    unknown = invoke(steps, "list", "initech")
    assert unknown.exit_code == 1 and unknown.output == "Error: no tenant named 'initech'\n"
    bad_state = invoke(steps, "list", "acme", "--state", "pending")
    assert bad_state.exit_code == 2 and "'pending' is not one of" in bad_state.output


def test_show_prints_the_step_and_what_it_did(steps: Steps) -> None:  # noqa: F811
    sent = steps.step(steps.world.tenant.id, "missed-call-text", "send_sms", "done")
    result = invoke(steps, "show", str(sent))
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"{sent} done missed-call-text step 2 send_sms due ")
    assert ' result {"from": "+15555550100", "sid": "SM' in line
    for missing in ("999999", "99999999999999999999999999"):
        gone = invoke(steps, "show", missing)
        assert gone.exit_code == 1 and gone.output == f"Error: no automation step {missing}\n"


def test_cancel_a_scheduled_step_and_it_never_runs(steps: Steps) -> None:  # noqa: F811
    acme = steps.world.tenant.id
    text = steps.step(acme, "missed-call-text", "send_sms", "scheduled")
    result = invoke(steps, "cancel", str(text), "--by", "avery@acme.example")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{text} canceled missed-call-text step 2 send_sms ")
    assert result.output.endswith(": canceled by avery@acme.example\n")

    again = invoke(steps, "cancel", str(text))
    assert again.exit_code == 1
    assert again.output == (
        f"Error: automation step {text} is canceled: only a scheduled step can be canceled\n"
    )
    done = steps.step(acme, "missed-call-text", "send_sms", "done")
    assert invoke(steps, "cancel", str(done)).output.startswith(f"Error: automation step {done} is done")
    assert invoke(steps, "cancel", "424242").output == "Error: no automation step 424242\n"

    texts = len(steps.world.texts())
    with db.transaction() as s:
        past = utcnow() - timedelta(minutes=5)
        s.execute(update(ActionRun).where(ActionRun.id == text).values(due_at=past))
    automations.sweep_actions()
    steps.world.run()
    assert len(steps.world.texts()) == texts
    assert invoke(steps, "show", str(text)).output.split()[1] == "canceled"


def test_cancel_without_by_names_the_login(steps: Steps) -> None:  # noqa: F811
    text = steps.step(steps.world.tenant.id, "missed-call-text", "send_sms", "scheduled")
    result = invoke(steps, "cancel", str(text))
    assert result.exit_code == 0, result.output
    assert ": canceled by " in result.output
