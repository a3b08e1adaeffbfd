"""The Salesforce commands as an admin types them: `tenant add --crm salesforce` with a token (the JWT bearer
alternative to the OAuth install) that the connector then uses against the emulator, its bad input, and
`switchboard emulate salesforce` serving the REST API to the real simple-salesforce."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from simple_salesforce import Salesforce
from sqlalchemy import select, text

from app.cli import main
from app.core import db
from app.core.models import Tenant
from connectors.base import Party
from connectors.salesforce.connector import SalesforceConnector
from emulators.salesforce import http_session
from tests.connectors.salesforce.test_connector import sf_emulator  # noqa: F401  (session fixture)

SID = "AC" + "e" * 32
TWILIO_TOKEN = "feed" * 8


def add(app: Any, *args: str, **kwargs: Any) -> Any:
    base = ["tenant", "add", "acme", "--twilio-account-sid", SID, "--crm", "salesforce", *args]
    return app.test_cli_runner().invoke(main, args=base, **kwargs)


def tenants() -> list[Tenant]:
    with db.transaction() as s:
        return list(s.scalars(select(Tenant)))


def test_tenant_add_with_a_token_connects_the_org(app, sf_emulator):  # noqa: F811
    info = sf_emulator.create_org()
    contact = sf_emulator.insert(info["org_id"], "Contact", {"LastName": "Rivera", "Phone": "(555) 555-0123"})
    result = add(
        app,
        "--twilio-auth-token",
        "-",
        "--salesforce-token",
        "-",
        "--salesforce-instance-url",
        sf_emulator.base_url,
        "--salesforce-org-id",
        info["org_id"][:15],  # Setup shows the 15-character id; Outbound Messages carry 18
        input=f"{TWILIO_TOKEN}\n{info['token']}\n",
    )
    assert result.exit_code == 0, result.output
    [row] = tenants()
    assert (row.crm, row.crm_account_id) == ("salesforce", info["org_id"])
    with db.transaction() as s:
        raw = s.execute(text("SELECT crm_secrets FROM tenants WHERE name = 'acme'")).scalar()
    assert info["token"] not in raw  # encrypted at rest
    match = SalesforceConnector(row).find_contact(Party(phone="+15555550123"))
    assert match is not None and match.ref.id == contact["Id"]


def test_tenant_add_without_the_org_s_details_or_with_bad_ones_stores_nothing(app):
    missing = add(app, "--twilio-auth-token", TWILIO_TOKEN, "--salesforce-token", "tok")
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "--salesforce-instance-url" in missing.output and "--salesforce-org-id" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    env_token = add(
        app,
        "--twilio-auth-token",
        TWILIO_TOKEN,
        "--salesforce-instance-url",
        "https://acme.my.salesforce.com",
        env={"SALESFORCE_TOKEN": ""},
        input="\n",
    )
    assert env_token.exit_code == 1 and "--salesforce-token" in env_token.output
    org = ("--salesforce-instance-url", "https://acme.my.salesforce.com", "--salesforce-org-id")
    for bad, named in (
        ((*org, "banana"), "--salesforce-org-id 'banana' is not an org id"),
        ((*org, "001000000000042"), "is not an org id"),  # an Account id, not an org's
        (
            ("--salesforce-instance-url", "acme.my.salesforce.com", "--salesforce-org-id", "00D000000000042"),
            "URL",
        ),
    ):
        refused = add(app, "--twilio-auth-token", TWILIO_TOKEN, "--salesforce-token", "tok", *bad)
        assert refused.exit_code == 2 and named in refused.output, refused.output
        assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert tenants() == []


def test_switchboard_emulate_salesforce_serves_the_rest_api() -> None:
    switchboard = Path(sys.executable).parent / "switchboard"
    org_id = "00D000000000042EAA"
    proc = subprocess.Popen(
        [str(switchboard), "emulate", "salesforce", "--port", "0", "--org-id", org_id, "--token", "dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "SWITCHBOARD_SECRET_KEY"},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().decode().strip()
        assert base.startswith("http://127.0.0.1:")
        sf = Salesforce(instance_url=base, session_id="dev", session=http_session(base), version="62.0")
        created = sf.Contact.create({"LastName": "Rivera", "Phone": "+15555550123"})
        assert created["success"] and created["id"].startswith("003")
        found = sf.query("SELECT Id FROM Contact")
        assert [r["Id"] for r in found["records"]] == [created["id"]]
        assert sf.api_usage["api-usage"].total == 15000  # Sforce-Limit-Info on every response
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=10)
