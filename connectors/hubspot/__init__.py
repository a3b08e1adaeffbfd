"""HubSpot, in one home: connector, OAuth tokens, install flow, webhooks, jobs and CLI commands.

Nothing here imports the HubSpot SDK until a tenant on HubSpot uses it: the registry reads PROVIDER only.
"""

from connectors import CrmProvider

PROVIDER = CrmProvider(
    name="hubspot",
    label="HubSpot",
    connector="connectors.hubspot.connector:HubSpotConnector",
    blueprints=("connectors.hubspot.install:install",),
    receiver="connectors.hubspot.webhooks:RECEIVER",
    cli="connectors.hubspot.cli",
    setup_job="connectors.hubspot.jobs:setup_portal",
)
