"""HubSpot, in one home: connector, OAuth tokens, install flow, webhooks, jobs and CLI commands.

Nothing here imports the HubSpot SDK until a tenant on HubSpot uses it: the registry reads PROVIDER only.
"""

from typing import Any

from connectors import CrmProvider, Setting


def _positive(value: Any) -> bool:
    return value > 0


SETTINGS = {
    "hubspot_requests_per_10s": Setting(
        100,
        "the portal's API budget per 10 seconds (Free/Starter 100; Professional/Enterprise 190)",
        check=_positive,
        rule="a whole number above 0",
    ),
    "hubspot_searches_per_second": Setting(
        4, "CRM search requests per second", check=_positive, rule="a whole number above 0"
    ),
}

PROVIDER = CrmProvider(
    name="hubspot",
    label="HubSpot",
    connector="connectors.hubspot.connector:HubSpotConnector",
    blueprints=("connectors.hubspot.install:install",),
    receiver="connectors.hubspot.webhooks:RECEIVER",
    cli="connectors.hubspot.cli",
    setup_job="connectors.hubspot.jobs:setup_portal",
    settings=SETTINGS,
)
