"""Salesforce housekeeping jobs: prepare a newly connected org."""

from __future__ import annotations

import logging

from app.core import bootstrap, db
from app.core.models import Tenant
from connectors.salesforce.connector import SalesforceConnector

log = logging.getLogger(__name__)


def setup_org(tenant_id: int) -> dict[str, list[str]]:
    """Create Switchboard_Id__c (and the SMS opt-out checkbox) in the org, where the Tooling API lets us."""
    bootstrap.current()
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None:
            return {"created": [], "refused": []}
    made, refused = SalesforceConnector(tenant).setup()
    log.info(
        "salesforce.setup tenant=%s created=%s refused=%s",
        tenant_id,
        ",".join(made) or "-",
        ",".join(refused) or "-",
    )
    return {"created": made, "refused": refused}
