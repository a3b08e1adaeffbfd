"""HubSpot housekeeping jobs: prepare a newly installed portal."""

from __future__ import annotations

import logging

from app.core import bootstrap, db
from app.core.models import Tenant
from connectors.hubspot.connector import HubSpotConnector

log = logging.getLogger(__name__)


def setup_portal(tenant_id: int) -> list[str]:
    """Create the unique switchboard_id property on the portal's object types (idempotent)."""
    bootstrap.current()
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None:
            return []
    made = HubSpotConnector(tenant).setup()
    log.info("hubspot.setup tenant=%s created=%s", tenant_id, ",".join(made) or "-")
    return made
