"""The demo tenant `switchboard run` creates on first start: a number, three users, a few contacts."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from app.core import db, tenants
from app.core.models import Tenant
from app.core.settings import VAR_DIR
from connectors.local import LocalConnector

DEMO = "demo"
DEMO_ACCOUNT = "AC" + "de" * 16
DEMO_NUMBER = "+15555550100"
KEY_FILE = VAR_DIR / "demo-api-key"


def ensure_demo() -> tuple[Tenant, str | None]:
    """Create the demo tenant if missing; returns it and its API key (read back from var/ on later runs)."""
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.name == DEMO))
        if tenant is not None:
            return tenant, KEY_FILE.read_text().strip() if KEY_FILE.exists() else None
        tenant = tenants.add_tenant(s, DEMO, account_sid=DEMO_ACCOUNT, auth_token=secrets.token_hex(16))
        tenants.add_number(s, tenant, DEMO_NUMBER, label="Main line")
        tenants.add_user(
            s, tenant, name="Avery Reyes", email="avery@demo.example", phone="+15555550199", default=True
        )
        tenants.add_user(s, tenant, name="Sam Patel", email="sam@demo.example", phone="+15555550198")
        casey = tenants.add_user(
            s, tenant, name="Casey Morgan", email="casey@demo.example", phone="+15555550197"
        )
        tenants.set_teams(s, casey, ["csm"])
        key = tenants.create_api_key(s, tenant)
    from app.automation import rules
    from app.automation.store import store_rules

    store_rules(tenant.id, rules.default_source())
    connector = LocalConnector(tenant)
    connector.add_contact("Jordan Rivera", ["+15555550123"], "jordan.rivera@example.net", "sam@demo.example")
    connector.add_contact("Priya Shah", ["(555) 555-0142"], "priya@example.org", "avery@demo.example")
    connector.add_contact("Alex Chen", ["555-555-0177", "+1 555 555 0178"], None, "sam@demo.example")
    KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    KEY_FILE.write_text(key + "\n")
    KEY_FILE.chmod(0o600)
    return tenant, key
