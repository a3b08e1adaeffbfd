"""The send_email automation step end to end: a signed inbound email (the captured SendGrid and Mailgun
fixtures) fires email.inbound, a real RQ worker runs the step, the SDK sends to the emulator, and the reply
starts an email.no_reply_within timer that only the contact's reply in that thread cancels. Opted-out
addresses are skipped, and a step retried after a crash, or recovered from a worker that died, sends one
message."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from redis import Redis
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from sqlalchemy import select, update

from app.automation import store
from app.channels import email
from app.core import caches, db, queue
from app.core.db import utcnow
from app.core.models import ActionRun, Tenant
from app.core.settings import Settings
from emulators.mailgun import MailgunEmulator
from emulators.sendgrid import SendGridEmulator
from jobs.automations import _gate, run_action, sweep_actions
from tests.channels.conftest import TO, configure, emails, outgoing, tenant_row
from tests.conftest import PUBLIC_BASE, TEST_KEY
from tests.signing import MAILGUN_FIXTURES, SENDGRID_FIXTURES, mailgun_signature, multipart_fixture

RULES = """
settings: {quiet_hours: "off"}
rules:
  - name: email-ack
    trigger: email.inbound
    actions:
      - WAIT
      - send_email:
          subject: "We got your email, {{ contact.name }}"
          body: "Thanks for writing to {{ tenant.name }}. {{ owner.first_name or 'We' }} will answer today."
  - name: follow-up
    trigger: email.no_reply_within
    when: {within: 2d}
    actions:
      - send_email: {subject: "Anything else?", body: "Just checking in.", from: tenant}
"""


def rules_text(wait: str = "0s") -> str:
    return RULES.replace("WAIT", f"wait: {wait}")


def drain(settings: Settings, redis_conn: Redis, run_worker: Any) -> None:
    """Run the queue, moving scheduled jobs in as they come due (the automations wait a few seconds for the
    sync job's contact match), until nothing is due within 10 s."""
    registry = ScheduledJobRegistry(settings.queue_name, connection=redis_conn)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        scheduler = RQScheduler([settings.queue_name], connection=redis_conn)
        scheduler.acquire_locks()
        scheduler.enqueue_scheduled_jobs()
        scheduler.release_locks()
        if run_worker():
            continue
        if not redis_conn.zrangebyscore(registry.key, 0, time.time() + 10):
            return
        time.sleep(0.5)


def runs() -> list[ActionRun]:
    with db.transaction() as s:
        return list(s.scalars(select(ActionRun).order_by(ActionRun.id)))


def post_sendgrid_inbound(client: Any, token: str) -> None:
    body, content_type = multipart_fixture(SENDGRID_FIXTURES, "inbound__parsed")
    response = client.post(
        f"/webhooks/sendgrid/inbound?token={token}",
        data=body,
        content_type=content_type,
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def post_mailgun_inbound(client: Any, token: str, key: str, **headers: str) -> None:
    """The captured Mailgun reply, with `headers` (Message_Id="<...>", In_Reply_To=...) replaced."""
    form = dict(parse_qsl((MAILGUN_FIXTURES / "inbound__reply.form").read_text().strip()))
    form.update({name.replace("_", "-"): value for name, value in headers.items()})
    form.update(mailgun_signature(key))
    response = client.post(
        f"/webhooks/mailgun/inbound?token={token}",
        data=urlencode(form),
        content_type="application/x-www-form-urlencoded",
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.fixture
def world(tenant: Tenant, sendgrid: dict[str, Any], settings: Settings) -> dict[str, Any]:
    caches.clear_all()
    store.store_rules(tenant.id, rules_text())
    return sendgrid


def test_an_inbound_email_is_answered_once_and_the_follow_up_waits_for_a_reply(
    app: Any,
    client: Any,
    tenant: Tenant,
    world: dict[str, Any],
    mailgun_emu: MailgunEmulator,
    sendgrid_emu: SendGridEmulator,
    settings: Settings,
    redis_conn: Redis,
    run_worker: Any,
) -> None:
    post_sendgrid_inbound(client, world["token"])
    post_sendgrid_inbound(client, world["token"])  # Inbound Parse retried: nothing twice
    drain(settings, redis_conn, run_worker)
    [msg] = sendgrid_emu.messages()
    assert (msg["to"], msg["from"], msg["from_name"]) == (TO, "sam@acme.example", "Sam Patel")  # the owner
    assert msg["subject"] == "We got your email, Jordan Rivera"
    assert msg["content"]["text/plain"] == "Thanks for writing to acme. Sam will answer today."
    ack, follow_up = runs()
    assert (ack.rule, ack.state, ack.trigger) == ("email-ack", "done", "email.inbound")
    assert ack.result["switchboard_id"] == msg["custom_args"]["switchboard_id"]
    sent = next(e for e in emails() if e.direction == "outbound")
    assert sent.status == "sent" and sent.provider_id == ack.result["switchboard_id"]
    assert (follow_up.rule, follow_up.state, follow_up.trigger) == ("follow-up", "scheduled", "email.sent")
    assert follow_up.due_at - sent.occurred_at == pytest.approx(timedelta(days=2), abs=timedelta(seconds=5))
    assert follow_up.context["unless"] == ["email_reply_in_thread"]
    assert follow_up.context["thread"] == sent.thread_key == ack.result["message_id"]
    # Jordan writes again (through Mailgun this time), in another thread: not a reply to our email, so the
    # follow-up still waits.
    domain = mailgun_emu.create_domain("mg.acme.example")
    token = configure(tenant, "sendgrid", mailgun_signing_key=domain["signing_key"])  # a new route token
    post_mailgun_inbound(client, token, domain["signing_key"])
    assert _gate(runs()[1]).outcome == "run"  # the step's own check, were it due now: not a reply
    drain(settings, redis_conn, run_worker)
    assert [(r.rule, r.state) for r in runs()] == [
        ("email-ack", "done"),
        ("follow-up", "scheduled"),  # another thread: no reply yet
        ("email-ack", "done"),  # the ack of Jordan's second email ...
        ("follow-up", "scheduled"),  # ... and its own follow-up
    ]
    # Then he answers our first email, in its thread: that follow-up (only) is cancelled, not sent.
    ours = f"<{ack.result['message_id']}>"
    post_mailgun_inbound(
        client,
        token,
        domain["signing_key"],
        Message_Id="<CAF1XTURE0000000000000000000000000000000000099@mail.example.net>",
        In_Reply_To=ours,
        References=ours,
    )
    verdict = _gate(runs()[1])  # before the worker's cancel: the step's own check sees the reply too
    assert verdict.outcome == "cancel" and verdict.what == "email reply in thread"
    drain(settings, redis_conn, run_worker)
    assert [(r.rule, r.state) for r in runs()][:4] == [
        ("email-ack", "done"),
        ("follow-up", "canceled"),  # Jordan answered in that thread
        ("email-ack", "done"),
        ("follow-up", "scheduled"),  # the other thread still waits
    ]
    assert "email reply in thread" in (runs()[1].reason or "")
    assert len(sendgrid_emu.messages()) == 3  # two acks and the ack of the reply; no follow-up


def test_an_opted_out_address_is_skipped(
    client: Any,
    tenant: Tenant,
    world: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    settings: Settings,
    served: str,
    redis_conn: Redis,
    run_worker: Any,
) -> None:
    earlier = email.send(tenant_row(tenant), settings, outgoing(), source="api")
    url = f"{served}/webhooks/sendgrid/events?token={world['token']}"
    assert sendgrid_emu.emit(earlier.provider_message_id or "", "spamreport", url)["status"] == 200
    post_sendgrid_inbound(client, world["token"])
    drain(settings, redis_conn, run_worker)
    [ack] = [r for r in runs() if r.rule == "email-ack"]
    assert ack.state == "skipped" and "marked as spam" in (ack.reason or "")
    assert len(sendgrid_emu.messages()) == 1  # the earlier email only


def test_a_step_retried_after_the_provider_took_it_sends_once(
    client: Any,
    world: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    settings: Settings,
    redis_conn: Redis,
    run_worker: Any,
) -> None:
    sendgrid_emu.fail_next(status=502, after_accept=True)
    post_sendgrid_inbound(client, world["token"])
    drain(settings, redis_conn, run_worker)
    [msg] = sendgrid_emu.messages()
    [ack] = [r for r in runs() if r.rule == "email-ack"]
    assert ack.state == "done" and ack.attempts == 2 and ack.result["recovered"] is True
    assert (
        sendgrid_emu.stats()["POST /v3/mail/send 502"] == 1
        and "POST /v3/mail/send 202" not in sendgrid_emu.stats()
    )
    [sent] = [e for e in emails() if e.direction == "outbound"]
    assert sent.status == "sent" and sent.provider_id == msg["custom_args"]["switchboard_id"]


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
def test_a_step_whose_worker_died_after_the_send_is_recovered_without_a_second_message(
    client: Any,
    tenant: Tenant,
    world: dict[str, Any],
    mailgun: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    mailgun_emu: MailgunEmulator,
    settings: Settings,
    redis_conn: Redis,
    run_worker: Any,
    provider: str,
) -> None:
    token = configure(tenant, provider)
    store.store_rules(tenant.id, rules_text(wait="1h"))
    post_sendgrid_inbound(client, token)
    drain(settings, redis_conn, run_worker)
    [ack] = runs()
    assert ack.state == "scheduled"
    # What a worker killed mid-step leaves behind: the step claimed (running), its attempt on the ledger
    # and accepted by the provider, and nothing recorded after the provider's answer.
    with db.transaction() as s:
        s.execute(update(ActionRun).where(ActionRun.id == ack.id).values(state="running", attempts=1))
    emu: Any = sendgrid_emu if provider == "sendgrid" else mailgun_emu
    emu.fail_next(status=500, after_accept=True)
    out = outgoing(
        switchboard_id=email.id_for(tenant.id, ack.key),
        subject="We got your email, Jordan Rivera",
        text="Thanks for writing to acme. Sam will answer today.",
        html=None,
    )
    with pytest.raises(email.Unavailable):
        email.send(tenant_row(tenant), settings, out, source="automation")
    assert len(emu.messages()) == 1
    # The sweeper recovers the stuck step; its next attempt asks the provider and finds the message.
    with db.transaction() as s:
        s.execute(
            update(ActionRun)
            .where(ActionRun.id == ack.id)
            .values(updated_at=utcnow() - timedelta(minutes=10), due_at=utcnow() - timedelta(minutes=1))
        )
    assert sweep_actions() == 1
    drain(settings, redis_conn, run_worker)
    [ack, *_follow_up] = runs()
    assert ack.state == "done" and ack.result["recovered"] is True
    assert len(emu.messages()) == 1


def _kill(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its work horse (RQ puts the horse in a process group of its own)."""
    horses = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == worker.pid:  # the parent pid
            horses.append(int(stat.parent.name))
    for pid in horses:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)


def test_a_worker_killed_after_the_provider_took_the_email_sends_it_once(
    client: Any,
    tenant: Tenant,
    world: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    settings: Settings,
    redis_conn: Redis,
    run_worker: Any,
    tmp_path: Path,
) -> None:
    """The real thing: the step runs in an `rq worker` process, SendGrid accepts the email and holds its
    answer, and the worker is killed (SIGKILL) before it hears it. The recovered step sends nothing more."""
    store.store_rules(tenant.id, rules_text(wait="1h"))
    post_sendgrid_inbound(client, world["token"])
    drain(settings, redis_conn, run_worker)
    [ack] = runs()
    with db.transaction() as s:
        s.execute(update(ActionRun).where(ActionRun.id == ack.id).values(due_at=utcnow()))
    queue.enqueue(settings, run_action, ack.id)
    sendgrid_emu.fail_next(status=202, after_accept=True, hang=30)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_SENTINELS",)}
    env.update(
        SWITCHBOARD_SECRET_KEY=TEST_KEY,
        SWITCHBOARD_VAR_DIR=str(tmp_path),
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SWITCHBOARD_QUEUE=settings.queue_name,
        SENDGRID_API_BASE=settings.sendgrid_api_base,
        LOG_LEVEL="INFO",
    )
    rq = Path(sys.executable).parent / "rq"
    with (tmp_path / "worker.log").open("ab") as log:
        worker = subprocess.Popen(
            [
                str(rq),
                "worker",
                "-w",
                "jobs.worker.Worker",
                "-c",
                "jobs.rq_config",
                "--burst",
                settings.queue_name,
            ],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not sendgrid_emu.messages() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
        assert len(sendgrid_emu.messages()) == 1, (tmp_path / "worker.log").read_text()
    finally:
        _kill(worker)
    [ack] = [r for r in runs() if r.id == ack.id]
    assert ack.state == "running" and emails()[-1].status == "sending"
    # Later the sweeper finds the step stuck (STUCK_RUNNING) and runs it again: SendGrid has it.
    with db.transaction() as s:
        s.execute(
            update(ActionRun)
            .where(ActionRun.id == ack.id)
            .values(updated_at=utcnow() - timedelta(minutes=10))
        )
    sweep_actions()
    drain(settings, redis_conn, run_worker)
    [ack] = [r for r in runs() if r.id == ack.id]
    assert ack.state == "done" and ack.result["recovered"] is True
    assert len(sendgrid_emu.messages()) == 1
    assert [e.status for e in emails() if e.direction == "outbound"] == ["sent"]
