"""Rules as code through the CLI: validation that names line and field, versions, and the dry run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.automation import rules
from app.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures"

BAD = """settings:
  quiet_hours: "8am-9pm"
rules:
  - name: missed
    trigger: call.mised
    actions:
      - send_sms: {body: "Hi {{ contact.name }"}
      - create_task: {subject: Call back, due_in: soon, assignee: boss}
      - wait: 2m
  - name: missed
    trigger: sms.inbound
    when: {regex: "(unclosed", colour: red}
    actions:
      - {send_sms: hi, create_task: {subject: x}}
"""


def invoke(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(main, list(args))


def test_invalid_rules_name_line_and_field_and_change_nothing(app, tenant, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = invoke(app, "rules", "load", "acme", str(path))
    assert result.exit_code == 1
    out = result.output
    assert "line 2: settings.quiet_hours: String should match pattern" in out
    assert "line 5: rules[0].trigger: Input should be 'call.missed'" in out
    assert "line 7: rules[0].actions[0].send_sms.body: template error" in out
    assert "line 8: rules[0].actions[1].create_task.due_in: 'soon' is not a duration" in out
    assert "line 8: rules[0].actions[1].create_task.assignee: assignee 'boss'" in out
    assert "line 12: rules[1].when.regex: invalid regular expression" in out
    assert "line 12: rules[1].when.colour: Extra inputs are not permitted" in out
    assert "line 14: rules[1].actions[0]: a step needs exactly one action" in out
    assert "rules not loaded" in out
    show = invoke(app, "rules", "show", "acme")
    assert show.exit_code == 1 and "has no rules" in show.output


def test_rule_level_problems_name_the_rule():
    try:
        rules.load(
            "rules:\n  - name: a\n    trigger: call.missed\n    actions:\n      - wait: 2m\n"
            "  - name: b\n    trigger: no_contact_within\n    actions:\n      - create_task: {subject: x}\n"
        )
    except rules.RulesError as exc:
        assert exc.problems == [
            "line 2: rules[0]: the last step cannot be a wait",
            "line 6: rules[1]: no_contact_within needs when.within (e.g. 5m)",
        ]
    else:
        raise AssertionError("accepted")


def test_not_yaml_is_reported_with_its_line():
    try:
        rules.load("rules:\n  - name: x\n   trigger: [unclosed\n")
    except rules.RulesError as exc:
        assert exc.problems[0].startswith("line 3: not valid YAML")
    else:
        raise AssertionError("accepted")


def test_load_versions_and_show(app, tenant, tmp_path):
    assert invoke(app, "rules", "load", "acme", "--default").output.startswith("rules version 1 loaded")
    path = tmp_path / "mine.yaml"
    path.write_text(
        "rules:\n  - name: only-this\n    trigger: sms.failed\n    actions:\n"
        "      - create_task: {subject: Fix it}\n"
    )
    assert (
        "rules version 2 loaded for acme (1 rules)" in invoke(app, "rules", "load", "acme", str(path)).output
    )
    shown = invoke(app, "rules", "show", "acme").output
    assert shown.startswith("# version 2") and "only-this" in shown


def test_default_rules_are_valid_and_documented():
    rule_set = rules.load(rules.default_source())
    names = [r.name for r in rule_set.rules]
    assert names == [
        "missed-call-text",
        "voicemail-task",
        "speed-to-lead",
        "pricing-question",
        "failed-text",
        "closed-won-handoff",
        "owner-change-briefing",
    ]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in names)


def test_dry_run_of_a_recorded_day(app, tmp_path):
    result = invoke(app, "rules", "test", str(rules.DEFAULT_RULES), str(FIXTURES / "timelines" / "day.yaml"))
    assert result.exit_code == 0, result.output
    out = result.output
    expected = [
        "[2026-03-10 08:30 CDT] call inbound +1 312-555-0123: missed (interaction 1)",
        "  rule missed-call-text: fires (conditions hold)",
        "    step 2 send_sms at 2026-03-10 08:32 CDT, unless outbound_call, inbound_sms, inbound_call",
        "[2026-03-10 08:32 CDT] missed-call-text step 2 send_sms: would text +1 312-555-0123: "
        "'Hi Jordan, this is sam. Sorry we missed your call. How can we help?'",
        "[2026-03-10 08:41 CDT] pricing-question step 1 create_task: would create task "
        "'Priya Shah asked about pricing' for owner, due 2026-03-10 09:11 CDT",
        "[2026-03-10 08:42 CDT] missed-call-text step 2 send_sms: cancelled: inbound sms first",
        "[2026-03-10 09:30 CDT] voicemail-task step 1 create_task: would create task "
        "'Voicemail from +1 312-555-0177' for owner, due 2026-03-10 10:30 CDT",
        "[2026-03-10 12:35 CDT] speed-to-lead step 1 create_task: would create task "
        "'New lead Alex Chen has not been contacted' for owner, due 2026-03-10 12:40 CDT",
        "[2026-03-10 13:35 CDT] speed-to-lead step 1 create_task: cancelled: outbound call first",
        "[2026-03-10 14:30 CDT] closed-won-handoff step 1 create_task: would create task "
        "'Onboard Rivera renewal' for ['crm:csm_owner_id', 'team:csm'], due 2026-03-11 14:30 CDT",
        "  opt-out recorded for +1 312-555-0188",
        "[2026-03-10 21:01 CDT] missed-call-text step 2 send_sms: quiet hours in America/Chicago: "
        "waits until 2026-03-11 08:00",
        "[2026-03-11 08:00 CDT] missed-call-text step 2 send_sms: would text +1 312-555-0166: "
        "'Hi there, this is dry run. Sorry we missed your call. How can we help?'",
    ]
    lines = out.splitlines()
    for line in expected:
        assert line in lines, line
    assert "would text +1 312-555-0142" not in out  # Priya texted first
    assert "Dana Kim has not been contacted" not in out  # called within five minutes


def test_dry_run_of_recorded_twilio_webhooks(app):
    files = [
        FIXTURES / "twilio" / n
        for n in ("voice__incoming.form", "voice__recording_voicemail.form", "voice__status_completed.form")
    ]
    result = invoke(
        app,
        "rules",
        "test",
        str(rules.DEFAULT_RULES),
        *map(str, files),
        "--start",
        "2026-03-11T12:00:00+00:00",
    )
    assert result.exit_code == 0, result.output
    assert "rule voicemail-task: fires (no conditions)" in result.output
    assert "would create task 'Voicemail from +1 555-555-0123'" in result.output


def test_dry_run_refuses_invalid_rules(app, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = invoke(app, "rules", "test", str(path), str(FIXTURES / "timelines" / "day.yaml"))
    assert result.exit_code == 1 and "line 5: rules[0].trigger" in result.output
