"""Rules that load but cannot run are refused when they load, with line and field (issue 10).

Impossible quiet hours, a misspelt time zone (once silently UTC) and a template naming a variable the
worker never gives are refused by `switchboard rules load` and by the dry run, like syntax errors, and
nothing is stored. Quiet hours have an explicit off, which the worker honours (real RQ worker, Twilio
emulator, SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app.automation import rules, store
from app.automation.compliance import allowed, next_allowed, parse_window, zone
from app.cli import main
from app.core.db import utcnow
from tests.automation.test_automations import (  # noqa: F401  (world and twilio_api are fixtures)
    JORDAN,
    missed_call,
    rules_text,
    twilio_api,
    world,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
NY = ZoneInfo("America/New_York")

CANNOT_RUN = """settings:
  quiet_hours: 08:00-25:00
  default_time_zone: America/New_Yrok
rules:
  - name: missed
    trigger: call.missed
    actions:
      - send_sms: "Hi {{ contakt.first_name }}"
      - create_task:
          subject: "Call {{ contact.name }}"
          body: "{{ interaction.body }} {{ sender }}"
"""


def invoke(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(main, list(args))


def problems(source: str) -> list[str]:
    with pytest.raises(rules.RulesError) as caught:
        rules.load(source)
    return caught.value.problems


def test_rules_that_cannot_run_are_not_loaded(app: Any, tenant: Any, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CANNOT_RUN)
    result = invoke(app, "rules", "load", "acme", str(path))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "Error: rules not loaded:" in lines
    assert (
        "  line 2: settings.quiet_hours: 25:00 in '08:00-25:00' is not a time of day (00:00 to 23:59)"
        in lines
    )
    assert (
        "  line 3: settings.default_time_zone: 'America/New_Yrok' is not a time zone;"
        " did you mean America/New_York?" in lines
    )
    assert any(
        line.startswith("  line 8: rules[0].actions[0].send_sms.body: template error: unknown variable")
        and "'contakt' (did you mean contact?)" in line
        for line in lines
    )
    assert any(
        line.startswith("  line 11: rules[0].actions[1].create_task.body: template error: unknown variable")
        and "'sender'" in line
        for line in lines
    )
    assert store.active_rules(tenant.id, fresh=True) is None  # nothing stored
    assert invoke(app, "rules", "show", "acme").exit_code == 1


def test_the_dry_run_refuses_them_too(app: Any, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CANNOT_RUN)
    result = invoke(app, "rules", "test", str(path), str(FIXTURES / "timelines" / "day.yaml"))
    assert result.exit_code == 1
    assert "rules not valid" in result.output
    assert "line 2: settings.quiet_hours: 25:00" in result.output
    assert "line 3: settings.default_time_zone" in result.output
    assert "line 8: rules[0].actions[0].send_sms.body: template error: unknown variable" in result.output


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("00:00-00:00", "'00:00-00:00' starts when it ends, which could mean never or always"),
        ("09:00-09:00", "'09:00-09:00' starts when it ends"),
        ("08:60-21:00", "08:60 in '08:60-21:00' is not a time of day"),
        ("24:00-06:00", "24:00 in '24:00-06:00' is not a time of day"),
        ("8am-9pm", "String should match pattern"),
        ("on", "String should match pattern"),
    ],
)
def test_impossible_quiet_hours(window: str, message: str) -> None:
    [problem] = problems(f'settings:\n  quiet_hours: "{window}"\n')
    assert problem.startswith("line 2: settings.quiet_hours: ")
    assert message in problem


def test_quiet_hours_that_yaml_reads_as_a_boolean_or_number() -> None:
    assert problems("settings:\n  quiet_hours: on\n") == [
        "line 2: settings.quiet_hours: quiet_hours is a window like 08:00-21:00, or off"
    ]
    assert problems("settings:\n  quiet_hours: 8\n") == [
        "line 2: settings.quiet_hours: quiet_hours is a window like 08:00-21:00, or off"
    ]


@pytest.mark.parametrize("off", ["off", "OFF", '"off"', "null", "~", "false"])
def test_quiet_hours_off(off: str) -> None:
    assert rules.load(f"settings:\n  quiet_hours: {off}\n").settings.quiet_hours is None


def test_quiet_hours_default_and_windows_across_midnight() -> None:
    assert rules.load("rules: []\n").settings.quiet_hours == "08:00-21:00"
    assert rules.load("settings:\n  quiet_hours: 22:00-06:00\n").settings.quiet_hours == "22:00-06:00"


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("America/New_Yrok", "did you mean America/New_York?"),
        ("Europe/Londn", "did you mean Europe/London?"),
        ("Mars/Olympus_Mons", "use an IANA name such as America/New_York"),
        ("America", "is not a time zone"),
        ("", "is not a time zone"),
    ],
)
def test_misspelt_time_zones(name: str, hint: str) -> None:
    [problem] = problems(f'settings:\n  default_time_zone: "{name}"\n')
    assert problem.startswith(f"line 2: settings.default_time_zone: {name!r} is not a time zone")
    assert hint in problem


def test_real_time_zones_load() -> None:
    for name in ("UTC", "America/Chicago", "Europe/Berlin", "Asia/Kolkata"):
        assert rules.load(f"settings:\n  default_time_zone: {name}\n").settings.default_time_zone == name


def test_templates_may_only_name_what_the_worker_gives_them() -> None:
    known = (
        "{{ contact.first_name or 'there' }} {{ owner.name }} {{ interaction.body }} {{ deal.name }}"
        " {{ tenant.name }} {{ crm_fields.csm_owner_id }}{% for i in recent %}{{ i }} {{ loop.index }}"
        "{% endfor %}{% set x = 1 %}{{ x }} {{ range(2) | list }}"
    )
    rules.load(f'rules:\n  - name: a\n    trigger: call.missed\n    actions:\n      - send_sms: "{known}"\n')
    for where, template in (
        ("send_sms.body", "send_sms: '{{ user.name }}'"),
        ("create_task.subject", "create_task: {subject: '{{ contacts.name }}'}"),
        ("create_task.body", "create_task: {subject: x, body: '{{ deals.amount }}'}"),
        ("update_crm.value", "update_crm: {property: note, value: '{{ now }}'}"),
    ):
        source = f"rules:\n  - name: a\n    trigger: call.missed\n    actions:\n      - {template}\n"
        [problem] = problems(source)
        assert problem.startswith(f"line 5: rules[0].actions[0].{where}: template error: unknown variable")
        assert "templates see contact, owner, interaction, deal, tenant, recent, crm_fields" in problem


def test_the_default_rules_still_load() -> None:
    assert rules.load(rules.default_source()).settings.quiet_hours == "08:00-21:00"


# --- compliance: the pure window functions the worker and the dry run call ---------------------------


def test_parse_window_off_allows_every_moment() -> None:
    assert parse_window(None) == (None, None)
    assert parse_window("off") == (None, None)
    start, end = parse_window(None)
    for hour in range(24):
        at = datetime(2026, 6, 1, hour, 30, tzinfo=NY)
        assert allowed(at, NY, start, end)
        assert next_allowed(at, NY, start, end) == at.astimezone(UTC)
    with pytest.raises(ValueError, match="naive"):
        next_allowed(datetime(2026, 6, 1, 12, 0), NY, start, end)


def test_parse_window_refuses_what_the_loader_refuses() -> None:
    assert parse_window(" 08:00 - 21:00 ") == (time(8), time(21))
    for bad in ("00:00-00:00", "25:00-08:00", "08:00", "8-9"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_zone_of_a_directory_is_unknown_not_a_crash() -> None:
    assert zone("America") is None
    assert zone("America/New_York") == NY


# --- the worker honours quiet hours off ----------------------------------------------------------------


def test_with_quiet_hours_off_the_worker_texts_at_any_time(world: Any) -> None:  # noqa: F811
    # A window that is closed now: with it the text would wait two hours (see test_automations); off sends.
    opens = (utcnow() + timedelta(hours=2)).replace(second=0, microsecond=0)
    closed_now = f'"{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}"'
    source = rules_text().replace('"00:00-23:59"', closed_now)
    assert rules.load(source).settings.quiet_hours != "00:00-23:59"
    store.store_rules(world.tenant.id, source.replace(closed_now, "off"))
    world.post(missed_call())
    world.run()
    [sent] = world.texts()
    assert sent["to"] == JORDAN
    send = next(r for r in world.runs() if r.action == "send_sms")
    assert send.state == "done" and send.reason is None


def test_the_dry_run_with_quiet_hours_off_texts_late_in_the_evening(app: Any, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules.default_source().replace('quiet_hours: "08:00-21:00"', "quiet_hours: off"))
    result = invoke(app, "rules", "test", str(path), str(FIXTURES / "timelines" / "day.yaml"))
    assert result.exit_code == 0, result.output
    assert "quiet hours" not in result.output
    assert any(
        line.startswith("[2026-03-10 21:01 CDT] missed-call-text step 2 send_sms: would text +1 312-555-0166")
        for line in result.output.splitlines()
    )
