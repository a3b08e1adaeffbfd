"""The `switchboard` command: scriptable provisioning, secrets encrypted at rest, keys shown once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text

from app.cli import main
from app.core import db
from app.core.models import ApiKey, LocalContact, Tenant, User

SID = "AC" + "c" * 32
TOKEN = "c0ffee" * 5 + "00"


def invoke(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(main, args=list(args))


def provision(app: Any) -> str:
    ok = [
        invoke(
            app,
            "tenant",
            "add",
            "initech",
            "--twilio-account-sid",
            SID,
            "--twilio-auth-token",
            TOKEN,
            "--crm",
            "local",
            "--region",
            "US",
            "--number",
            "(555) 555-0300",
        ),
        invoke(
            app,
            "user",
            "add",
            "initech",
            "--name",
            "Peter Gibbons",
            "--email",
            "Peter@initech.example",
            "--phone",
            "+15555550301",
            "--default",
        ),
        invoke(
            app,
            "user",
            "add",
            "initech",
            "--name",
            "Milton",
            "--email",
            "milton@initech.example",
            "--phone",
            "555-555-0302",
            "--crm-owner-id",
            "owner-7",
        ),
        invoke(
            app,
            "contact",
            "add",
            "initech",
            "--name",
            "Bill Lumbergh",
            "--phone",
            "(555) 555-0399",
            "--phone",
            "+1 555 555 0398",
            "--email",
            "bill@initech.example",
            "--owner",
            "milton@initech.example",
        ),
    ]
    for result in ok:
        assert result.exit_code == 0, result.output
    key = invoke(app, "apikey", "create", "initech")
    assert key.exit_code == 0
    return key.output.strip().splitlines()[-1]


def test_provisioning_end_to_end(app, client):
    key = provision(app)
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.name == "initech"))
        assert tenant.twilio_auth_token == TOKEN  # decrypts transparently
        stored = s.execute(text("SELECT twilio_auth_token FROM tenants WHERE name = 'initech'")).scalar()
        assert TOKEN not in stored  # ...but is ciphertext at rest
        assert [n.e164 for n in tenant.numbers] == ["+15555550300"]
        users = {u.email: u for u in s.scalars(select(User))}
        assert users["peter@initech.example"].is_default and users["peter@initech.example"].crm_owner_id == (
            "peter@initech.example"
        )
        assert users["milton@initech.example"].phone == "+15555550302"
        contact = s.scalar(select(LocalContact))
        assert contact.owner_id == "owner-7" and sorted(p.e164 for p in contact.phones) == [
            "+15555550398",
            "+15555550399",
        ]
        assert key not in {k.key_hash for k in s.scalars(select(ApiKey))}  # only the hash is kept
    r = client.get("/api/v1/contacts?phone=5555550398", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and [c["name"] for c in r.json["data"]] == ["Bill Lumbergh"]


def test_errors_are_clear_and_change_nothing(app):
    provision(app)
    again = invoke(
        app, "tenant", "add", "initech", "--twilio-account-sid", "AC" + "d" * 32, "--twilio-auth-token", "x"
    )
    assert again.exit_code == 1 and "already exists" in again.output
    same_account = invoke(
        app, "tenant", "add", "other", "--twilio-account-sid", SID, "--twilio-auth-token", "x"
    )
    assert same_account.exit_code == 1 and "already belongs" in same_account.output
    bad_phone = invoke(app, "user", "add", "initech", "--name", "X", "--email", "x@y.z", "--phone", "banana")
    assert bad_phone.exit_code == 1 and "not a phone number" in bad_phone.output
    no_tenant = invoke(app, "apikey", "create", "nobody")
    assert no_tenant.exit_code == 1 and "no tenant named 'nobody'" in no_tenant.output
    no_owner = invoke(
        app,
        "contact",
        "add",
        "initech",
        "--name",
        "Y",
        "--phone",
        "+15555550111",
        "--owner",
        "ghost@initech.example",
    )
    assert no_owner.exit_code == 1 and "no user" in no_owner.output
    with db.transaction() as s:
        assert s.scalar(text("SELECT count(*) FROM tenants")) == 1
        assert s.scalar(text("SELECT count(*) FROM users")) == 2
        assert s.scalar(text("SELECT count(*) FROM local_contacts")) == 1


def test_tenant_settings_are_validated(app):
    provision(app)
    assert invoke(app, "tenant", "set", "initech", "ring_timeout", "30").exit_code == 0
    assert invoke(app, "tenant", "set", "initech", "unknown_contacts", "skip").exit_code == 0
    assert invoke(app, "tenant", "set", "initech", "record_calls", "7").exit_code == 2
    assert invoke(app, "tenant", "set", "initech", "unknown_contacts", "maybe").exit_code == 2
    with db.transaction() as s:
        settings = s.scalar(select(Tenant.settings).where(Tenant.name == "initech"))
    assert settings == {"ring_timeout": 30, "unknown_contacts": "skip"}


def test_list_and_number_add_and_sweep(app):
    provision(app)
    assert invoke(app, "number", "add", "initech", "+15555550310", "--label", "Support").exit_code == 0
    listing = invoke(app, "tenant", "list")
    assert "initech\tlocal\t" + SID in listing.output and "+15555550310" in listing.output
    sweep = invoke(app, "sweep")
    assert sweep.exit_code == 0 and "re-enqueued 0" in sweep.output
