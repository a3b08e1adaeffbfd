"""CRM connectors: a registry from a tenant's `crm` setting to the class that talks to that CRM."""

from __future__ import annotations

from importlib import import_module

from app.core.models import Tenant
from connectors.base import Connector

# Import strings, so a tenant on one CRM never imports another CRM's SDK.
REGISTRY: dict[str, str] = {
    "local": "connectors.local:LocalConnector",
    "hubspot": "connectors.hubspot.connector:HubSpotConnector",
}


def get_connector(tenant: Tenant) -> Connector:
    """The connector for the tenant's CRM."""
    try:
        target = REGISTRY[tenant.crm]
    except KeyError:
        raise LookupError(f"tenant {tenant.id} uses unknown CRM {tenant.crm!r}") from None
    module, _, attr = target.partition(":")
    cls = getattr(import_module(module), attr)
    return cls(tenant)
