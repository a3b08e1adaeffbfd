"""Automations end to end: rules fire on real webhooks, steps run through a real RQ worker, texts go
through the twilio SDK to the Twilio REST emulator, tasks land in the CRM; exactly once throughout."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from rq.scheduler import RQScheduler
from sqlalchemy import select

from app.automation import store
from app.cli import simulate
from app.core import caches, db, tenants
from app.core.db import utcnow
from app.core.models import ActionRun, Interaction, LocalContact, LocalTask, OptOut, Tenant, User
from app.web import create_app
from emulators.twilio import TwilioEmulator
from jobs import automations
from tests.conftest import PUBLIC_BASE, count
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, fixture_params

OUR, JORDAN, STRANGER = "+15555550100", "+15555550123", "+15555550111"

RULES = """
settings:
  quiet_hours: "00:00-23:59"
  default_time_zone: UTC
  help_reply: "Acme: reply STOP to opt out."
rules:
  - name: missed-call-text
    trigger: call.missed
    when: {direction: inbound}
    actions:
      - wait: WAIT
      - send_sms:
          body: "Hi {{ contact.first_name or 'there' }}, sorry we missed you. {{ owner.first_name }} here."
        unless: [outbound_call, inbound_sms, inbound_call]
      - create_task: {subject: "Call back {{ contact.name }}", due_in: 15m, priority: high}
  - name: voicemail-task
    trigger: call.voicemail
    actions:
      - create_task: {subject: "Voicemail from {{ contact.name }}", body: "{{ interaction.body }}"}
  - name: long-call-note
    trigger: call.completed
    when: {min_duration: 300}
    actions:
      - update_crm: {property: last_long_call, value: "{{ interaction.duration_seconds }}s"}
  - name: pricing
    trigger: sms.inbound
    when: {regex: "pric(e|ing)|quote"}
    actions:
      - create_task:
          subject: "Pricing question from {{ contact.name }}"
          assignee: [user:casey@acme.example]
  - name: failed-text
    trigger: sms.failed
    actions:
      - create_task: {subject: "Text failed ({{ interaction.error_code }})", assignee: team:csm}
  - name: speed-to-lead
    trigger: no_contact_within
    when: {within: WITHIN}
    actions:
      - create_task: {subject: "Call new lead {{ contact.name }}", priority: high}
"""


def rules_text(wait: str = "0s", within: str = "0s") -> str:
    return RULES.replace("WAIT", wait).replace("WITHIN", within)


@pytest.fixture(scope="session")
def twilio_api() -> Any:
    emu = TwilioEmulator()
    emu.base_url = emu.start()
    yield emu
    emu.stop()


def make_world(twilio_api, settings, tenant, redis_conn, run_worker, *, rules: str | None) -> Any:
    """The fixture tenant against a fresh Twilio emulator account, Casey in the csm team, `rules` loaded."""
    twilio_api.reset()
    twilio_api.create_account(FIXTURE_ACCOUNT, FIXTURE_TOKEN)
    twilio_api.add_number(FIXTURE_ACCOUNT, OUR)
    app = create_app(settings.with_(twilio_api_base=twilio_api.base_url))
    with db.transaction() as s:
        casey = s.scalar(select(User).where(User.email == "casey@acme.example"))
        tenants.set_teams(s, casey, ["csm"])
    caches.clear_all()
    if rules is not None:
        store.store_rules(tenant.id, rules)
    return World(app, twilio_api, tenant, redis_conn, run_worker, settings)


@pytest.fixture
def world(twilio_api, settings, tenant, redis_conn, run_worker) -> Any:
    return make_world(twilio_api, settings, tenant, redis_conn, run_worker, rules=rules_text())


class World:
    def __init__(
        self, app: Any, emu: TwilioEmulator, tenant: Tenant, redis: Any, run_worker: Any, settings: Any
    ) -> None:
        from tests.signing import TwilioPoster

        self.app, self.emu, self.tenant, self.redis, self.worker = app, emu, tenant, redis, run_worker
        self.settings = settings
        self.twilio = TwilioPoster(app.test_client(), PUBLIC_BASE, FIXTURE_TOKEN)

    def rules(self, **kw: str) -> None:
        store.store_rules(self.tenant.id, rules_text(**kw))

    def post(self, scenario: simulate.Scenario) -> None:
        for post in scenario.deliveries():
            assert self.twilio.post(post.path, post.params).status_code in (200, 204)

    def run(self) -> None:
        """Drain the queue, moving due scheduled jobs in, until nothing is left to do."""
        for _ in range(10):
            scheduler = RQScheduler([self.settings.queue_name], connection=self.redis)
            scheduler.acquire_locks()
            scheduler.enqueue_scheduled_jobs()
            scheduler.release_locks()
            if not self.worker():
                return

    def texts(self) -> list[dict[str, Any]]:
        return self.emu.messages(FIXTURE_ACCOUNT)

    def tasks(self) -> list[LocalTask]:
        with db.transaction() as s:
            return list(s.scalars(select(LocalTask).order_by(LocalTask.id)))

    def runs(self) -> list[ActionRun]:
        with db.transaction() as s:
            return list(s.scalars(select(ActionRun).order_by(ActionRun.id)))


def rep_call(to: str, seconds: int) -> dict[str, str]:
    """The completed status callback of a call a rep made (outbound-api) to `to`."""
    return {
        "AccountSid": FIXTURE_ACCOUNT,
        "CallSid": simulate.sid("CA"),
        "CallStatus": "completed",
        "Direction": "outbound-api",
        "From": OUR,
        "To": to,
        "CallDuration": str(seconds),
        "SequenceNumber": "3",
    }


def missed_call(caller: str = JORDAN) -> simulate.Scenario:
    return simulate.inbound_call(FIXTURE_ACCOUNT, caller, OUR, "+15555550198", "missed")


def test_missed_call_texts_the_caller_and_tasks_the_owner(world):
    world.post(missed_call())
    world.run()
    [text] = world.texts()
    assert (text["to"], text["from"]) == (JORDAN, OUR)
    assert text["body"] == "Hi Jordan, sorry we missed you. Sam here."
    [task] = world.tasks()
    assert task.subject == "Call back Jordan Rivera" and task.assignee_id == "sam@acme.example"
    assert task.priority == "high"
    # the text is an outbound interaction on the ledger like any other, and reached the timeline
    with db.transaction() as s:
        sent = s.scalar(select(Interaction).where(Interaction.provider_id == text["sid"]))
    assert (sent.channel, sent.direction, sent.body, sent.sync_state) == (
        "sms",
        "outbound",
        text["body"],
        "synced",
    )
    assert [r.state for r in world.runs()] == ["done", "done"]


def test_duplicates_retries_and_sweeps_never_send_twice(world):
    scenario = missed_call()
    world.post(scenario)
    world.post(scenario)  # Twilio retried every callback
    world.run()
    with db.transaction() as s:
        call_id = s.scalar(select(Interaction.id).where(Interaction.channel == "call"))
    automations.on_interaction(call_id)  # a retried trigger job
    automations.on_interaction(call_id)
    with db.transaction() as s:  # a step whose worker died after Twilio took the text
        s.execute(
            ActionRun.__table__.update()
            .where(ActionRun.action == "send_sms")
            .values(state="running", updated_at=utcnow() - timedelta(minutes=10))
        )
    assert automations.sweep_actions() == 1
    world.run()
    assert len(world.texts()) == 1  # the recovery found the text in Twilio's log instead of resending
    assert len(world.tasks()) == 1
    send = next(r for r in world.runs() if r.action == "send_sms")
    assert send.state == "done" and send.result["recovered"] is True


def test_reply_before_the_timer_cancels_the_text(world):
    world.rules(wait="4s")
    world.post(missed_call())
    world.run()
    world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, OUR, "call me later"))
    world.run()
    time.sleep(4.2)
    world.run()
    assert world.texts() == []
    send = next(r for r in world.runs() if r.action == "send_sms")
    assert send.state == "canceled" and send.reason.startswith("inbound sms (interaction:")
    assert len(world.tasks()) == 1  # the call-back task still stands


def test_rep_calling_back_cancels_the_text(world):
    world.rules(wait="4s")
    world.post(missed_call())
    world.run()
    callback = simulate.Scenario(
        "rep calls back",
        [],
        [
            simulate.Post(
                "/webhooks/twilio/call-status",
                rep_call(JORDAN, 40),
            )
        ],
    )
    world.post(callback)
    time.sleep(4.2)
    world.run()
    assert world.texts() == []
    assert next(r for r in world.runs() if r.action == "send_sms").state == "canceled"


@pytest.mark.parametrize("trial", range(4))
def test_cancellation_racing_the_timer_has_one_winner(world, trial):
    world.post(missed_call())
    with db.transaction() as s:
        call_id = s.scalar(select(Interaction.id).where(Interaction.channel == "call"))
    from jobs.sync import drain

    drain(world.tenant.id)  # the sync matches the contact; the automation job is run by hand below
    automations.on_interaction(call_id)
    [send] = [r for r in world.runs() if r.action == "send_sms"]
    reply = simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, OUR, "hello?").first[0]
    barrier = threading.Barrier(2)

    def timer() -> None:
        barrier.wait()
        automations.run_action(send.id)

    def reply_arrives() -> None:
        barrier.wait()
        world.twilio.post(reply.path, reply.params)
        with db.transaction() as s:
            sms_id = s.scalar(
                select(Interaction.id).where(Interaction.channel == "sms", Interaction.direction == "inbound")
            )
        automations.on_interaction(sms_id)

    threads = [threading.Thread(target=timer), threading.Thread(target=reply_arrives)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.transaction() as s:
        state = s.get(ActionRun, send.id).state
    assert state in ("done", "canceled")
    assert len(world.texts()) == (1 if state == "done" else 0)  # sent xor cancelled, never both


@pytest.mark.parametrize("word", ["STOP", "stop", " Stop. ", "unsubscribe", "END"])
def test_opt_out_keywords_block_automated_texts(world, word):
    world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, OUR, word))
    world.post(missed_call())
    world.run()
    assert world.texts() == []
    send = next(r for r in world.runs() if r.action == "send_sms")
    assert send.state == "skipped" and send.reason == "recipient opted out of texts"
    with db.transaction() as s:
        row = s.scalar(select(OptOut))
        contact = s.scalar(select(LocalContact).where(LocalContact.name == "Jordan Rivera"))
    assert (row.phone, row.opted_out, row.source) == (JORDAN, True, "keyword")
    assert contact.properties["sms_opt_out"] is True  # mirrored to the CRM


def test_start_opts_back_in(world):
    world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, OUR, "STOP"))
    world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, OUR, "  start "))
    world.post(missed_call())
    world.run()
    assert len(world.texts()) == 1
    with db.transaction() as s:
        assert s.scalar(select(OptOut.opted_out)) is False


def test_help_is_answered_and_advanced_opt_out_is_not_answered_twice(world):
    r = world.twilio.post(
        "/webhooks/twilio/sms",
        {**fixture_params("sms__inbound"), "Body": "help", "MessageSid": simulate.sid("SM")},
    )
    assert "<Message>Acme: reply STOP to opt out.</Message>" in r.get_data(as_text=True)
    stop = world.twilio.fixture(
        "/webhooks/twilio/sms", "sms__inbound_stop"
    )  # OptOutType=STOP: Twilio replied
    assert "<Message>" not in stop.get_data(as_text=True)
    with db.transaction() as s:
        assert s.scalar(select(OptOut.opted_out).where(OptOut.phone == JORDAN)) is True


def test_error_21610_marks_the_number_opted_out(world):
    world.emu.opt_out(FIXTURE_ACCOUNT, JORDAN)  # the carrier knows something we did not
    world.post(missed_call())
    world.run()
    assert world.texts() == []
    send = next(r for r in world.runs() if r.action == "send_sms")
    assert send.state == "skipped" and "21610" in send.reason
    with db.transaction() as s:
        row = s.scalar(select(OptOut))
    assert (row.phone, row.source, row.opted_out) == (JORDAN, "21610", True)


def test_outside_quiet_hours_the_text_waits_for_the_window(world):
    now = utcnow()
    opens = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    window = f"{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}"
    store.store_rules(world.tenant.id, rules_text().replace('"00:00-23:59"', f'"{window}"'))
    with db.transaction() as s:
        s.scalar(select(LocalContact).where(LocalContact.name == "Jordan Rivera")).time_zone = "UTC"
    world.post(missed_call())
    world.run()
    assert world.texts() == []
    send = next(r for r in world.runs() if r.action == "send_sms")
    assert send.state == "scheduled" and send.due_at == opens
    assert send.reason.startswith("quiet hours in UTC: waits until")


def test_voicemail_completed_call_keyword_and_failed_text_triggers(world):
    world.post(simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR, "+15555550198", "voicemail"))
    world.twilio.post(
        "/webhooks/twilio/call-status",
        rep_call(JORDAN, 420),
    )
    world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, OUR, "What's your pricing?"))
    world.twilio.fixture("/webhooks/twilio/sms-status", "sms__status_undelivered")
    world.run()
    subjects = sorted(t.subject for t in world.tasks())
    assert subjects == [
        "Pricing question from Jordan Rivera",
        "Text failed (30003)",
        "Voicemail from Jordan Rivera",
    ]
    tasks = {t.subject: t for t in world.tasks()}
    assert tasks["Pricing question from Jordan Rivera"].assignee_id == "casey@acme.example"  # user:EMAIL
    assert tasks["Text failed (30003)"].assignee_id == "casey@acme.example"  # team:csm round-robin
    with db.transaction() as s:
        contact = s.scalar(select(LocalContact).where(LocalContact.name == "Jordan Rivera"))
    assert contact.properties["last_long_call"] == "420s"  # update_crm on a call over 300 s


def test_new_lead_without_contact_gets_a_task_and_one_called_back_does_not(world):
    world.rules(within="1s")
    world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, STRANGER, OUR, "hi"))  # creates a contact: a new lead
    world.post(simulate.inbound_sms(FIXTURE_ACCOUNT, "+15555550122", OUR, "hello"))
    world.run()
    world.twilio.post(
        "/webhooks/twilio/call-status",
        rep_call("+15555550122", 30),
    )
    world.run()
    time.sleep(2.2)
    world.run()
    subjects = [t.subject for t in world.tasks()]
    assert subjects == ["Call new lead +1 555-555-0111"]
    states = sorted((r.rule, r.state) for r in world.runs() if r.rule == "speed-to-lead")
    assert states == [("speed-to-lead", "canceled"), ("speed-to-lead", "done")]


def test_round_robin_is_fair_across_concurrent_workers(world):
    with db.transaction() as s:
        t = s.get(Tenant, world.tenant.id)
        for n in range(3):
            user = tenants.add_user(s, t, name=f"CSM {n}", email=f"csm{n}@acme.example", phone=None)
            tenants.set_teams(s, user, ["onboarding"])
    picks: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            user = tenants.next_in_team(world.tenant.id, "onboarding")
            with lock:
                picks.append(user.email)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(picks.count(f"csm{n}@acme.example") for n in range(3)) == [10, 10, 10]


def test_notify_posts_a_signed_request_once(world):
    import hashlib
    import hmac
    import json
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    received: list[tuple[dict[str, str], bytes]] = []

    def receiver(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        received.append(({k: v for k, v in environ.items() if k.startswith("HTTP_")}, body))
        start_response("204 No Content", [])
        return [b""]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, receiver, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        store.store_rules(
            world.tenant.id,
            rules_text()
            + f"""
  - name: tell-slack
    trigger: call.missed
    actions:
      - notify: {{url: "{url}", secret: s3cret}}
""",
        )
        world.post(missed_call())
        world.run()
        automations.sweep_actions()
        world.run()
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1
    headers, body = received[0]
    stamp, digest = (part.split("=", 1)[1] for part in headers["HTTP_X_SWITCHBOARD_SIGNATURE"].split(","))
    assert hmac.compare_digest(
        digest, hmac.new(b"s3cret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    assert headers["HTTP_IDEMPOTENCY_KEY"].startswith("tell-slack:call.missed:interaction:")
    assert json.loads(body)["contact"]["name"] == "Jordan Rivera"


def test_tenant_without_rules_runs_no_automations(world):
    from app.core.models import RuleSet

    with db.transaction() as s:
        s.query(RuleSet).delete()
    caches.clear_all()
    world.post(missed_call())
    world.run()
    assert world.texts() == [] and world.tasks() == [] and count(ActionRun) == 0


def test_twilio_rate_limit_is_retried_and_a_bad_number_fails_for_good(world):
    world.emu.fail_next("/2010-04-01/Accounts/*/Messages.json", status=429, count=1)
    world.post(missed_call())
    world.run()
    assert len(world.texts()) == 1
    send = next(r for r in world.runs() if r.action == "send_sms")
    assert (send.state, send.attempts) == ("done", 2)

    world.emu.fail_next("/2010-04-01/Accounts/*/Messages.json", status=400, count=1, code=21211)
    world.post(missed_call(STRANGER))
    world.run()
    failed = [r for r in world.runs() if r.action == "send_sms" and r.party_phone == STRANGER]
    assert failed[0].state == "failed" and failed[0].reason.startswith("Twilio error 21211")
    assert len(world.texts()) == 1


def test_cli_puts_users_in_teams(world):
    from app.cli import main

    result = world.app.test_cli_runner().invoke(
        main,
        [
            "user",
            "add",
            "acme",
            "--name",
            "Lee",
            "--email",
            "lee@acme.example",
            "--team",
            "csm",
            "--team",
            "Support",
        ],
    )
    assert result.exit_code == 0, result.output
    picks = {tenants.next_in_team(world.tenant.id, "support").email for _ in range(2)}
    assert picks == {"lee@acme.example"}
    assert {tenants.next_in_team(world.tenant.id, "csm").email for _ in range(4)} == {
        "casey@acme.example",
        "lee@acme.example",
    }


def test_text_comes_from_the_number_local_to_the_contact(world):
    sf_number, sf_caller = "+14155550100", "+14155550123"
    world.emu.add_number(FIXTURE_ACCOUNT, sf_number)
    with db.transaction() as s:
        tenants.add_number(s, s.get(Tenant, world.tenant.id), sf_number)
    # Outreach (no conversation yet) and `reply_from: local` use the number local to the contact ...
    assert automations.choose_from_number(world.tenant.id, sf_caller, None) == sf_number
    assert automations.choose_from_number(world.tenant.id, sf_caller, OUR, "local") == sf_number
    assert automations.choose_from_number(world.tenant.id, "+12125550123", None) == OUR  # no local number
    # ... while a reply goes from the number the customer called (the default, reply_from: called).
    assert automations.choose_from_number(world.tenant.id, sf_caller, OUR) == OUR
    world.post(missed_call(sf_caller))  # the caller dialled the 555 number; the reply comes from it
    world.run()
    [text] = world.texts()
    assert (text["to"], text["from"]) == (sf_caller, OUR)
