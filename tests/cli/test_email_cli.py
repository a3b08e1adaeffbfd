"""`switchboard email`: provider keys stored encrypted, a route token shown once and stored hashed."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text

from app.cli.email import group
from app.core import db, mail
from app.core.models import Tenant
from tests.signing import SendGridSigner


def test_set_sendgrid_and_mailgun(app: Any, tenant: Tenant) -> None:
    runner = app.test_cli_runner()
    key = SendGridSigner().verification_key
    result = runner.invoke(group, ["set-sendgrid", "acme", "--verification-key", key, "--route-token-new"])
    assert result.exit_code == 0, result.output
    token = re.search(r"/webhooks/sendgrid/events\?token=(\S+)", result.output)
    assert token is not None
    found = mail.tenant_for_route_token(token.group(1))
    assert found is not None and found.id == tenant.id
    assert mail.email_secrets(found)["sendgrid_verification_key"] == key

    result = runner.invoke(group, ["set-mailgun", "acme", "--signing-key", "-"], input="mg-signing-key\n")
    assert result.exit_code == 0, result.output
    assert "route token unchanged" in result.output
    found = mail.tenant_for_route_token(token.group(1))  # the token still works
    assert found is not None and mail.email_secrets(found)["mailgun_signing_key"] == "mg-signing-key"
    with db.engine().connect() as conn:
        stored = conn.execute(text("SELECT email_secrets, email_route_hash FROM tenants")).one()
    assert "mg-signing-key" not in stored[0] and token.group(1) not in stored[1]  # encrypted, hashed


def test_a_bad_verification_key_is_refused(app: Any, tenant: Tenant) -> None:
    result = app.test_cli_runner().invoke(group, ["set-sendgrid", "acme", "--verification-key", "nope"])
    assert result.exit_code == 2 and "not a SendGrid verification key" in result.output


def test_set_sender_and_inbound_basic_auth(app: Any, tenant: Tenant) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        group,
        ["set-sender", "acme", "--provider", "mailgun", "--api-key", "-",
         "--from", "Acme <hello@acme.example>", "--mailgun-domain", "MG.acme.example",
         "--mailgun-region", "eu"],
        input="key-mailgun-secret\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        keys = mail.email_secrets(row)
    assert keys["send_provider"] == "mailgun" and keys["mailgun_api_key"] == "key-mailgun-secret"
    assert keys["email_from"] == "hello@acme.example" and keys["mailgun_domain"] == "mg.acme.example"
    assert keys["mailgun_region"] == "eu"
    with db.engine().connect() as conn:
        assert "key-mailgun-secret" not in conn.execute(text("SELECT email_secrets FROM tenants")).scalar()
    missing = runner.invoke(group, ["set-sender", "acme", "--provider", "mailgun", "--api-key", "k"])
    assert missing.exit_code == 2 and "--mailgun-domain" in missing.output
    bad = runner.invoke(
        group, ["set-sender", "acme", "--provider", "sendgrid", "--api-key", "k", "--from", "x"]
    )
    assert bad.exit_code == 2 and "not an email address" in bad.output

    result = runner.invoke(group, ["sendgrid-inbound-auth", "acme", "--new"])
    assert result.exit_code == 0, result.output
    found = re.search(r"://(sendgrid):(\S+)@", result.output)
    assert found is not None
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        assert mail.inbound_basic_auth_ok(row, "sendgrid", found.group(2))
        assert not mail.inbound_basic_auth_ok(row, "sendgrid", "wrong")
    assert runner.invoke(group, ["sendgrid-inbound-auth", "acme", "--off"]).exit_code == 0
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None and mail.inbound_basic_auth_ok(row, None, None)
    assert runner.invoke(group, ["sendgrid-inbound-auth", "acme"]).exit_code == 2


def refused(result: Any, *words: str) -> None:
    """Exit 2 and one line naming what was wrong, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(w in lines[0] for w in words), lines[0]


def _secrets(tenant: Tenant) -> dict[str, str]:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        return mail.email_secrets(row)


def test_sendgrid_inbound_signature_on_and_off(app: Any, tenant: Tenant) -> None:
    runner = app.test_cli_runner()
    key = SendGridSigner().verification_key
    result = runner.invoke(
        group, ["sendgrid-inbound-signature", "acme", "--verification-key", "-"], input=key
    )
    assert result.exit_code == 0, result.output
    assert "needs SendGrid's signature" in result.output
    assert _secrets(tenant)["sendgrid_inbound_verification_key"] == key
    result = runner.invoke(group, ["sendgrid-inbound-signature", "acme", "--off"])
    assert result.exit_code == 0 and "no longer needs" in result.output
    assert "sendgrid_inbound_verification_key" not in _secrets(tenant)
    for args in (["--verification-key", "nope"], [], ["--off", "--verification-key", key]):
        result = runner.invoke(group, ["sendgrid-inbound-signature", "acme", *args])
        refused(result)
    assert "sendgrid_inbound_verification_key" not in _secrets(tenant)
