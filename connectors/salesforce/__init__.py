"""Salesforce, in one home: connector, OAuth tokens, install flow, Outbound Message receiver, polling by
SystemModstamp (for orgs without Outbound Messages), jobs, settings and CLI.

Nothing here imports simple-salesforce until a tenant on Salesforce uses it: the registry reads PROVIDER only.
"""

from connectors import CrmProvider
from connectors.salesforce.settings import SETTINGS

PROVIDER = CrmProvider(
    name="salesforce",
    label="Salesforce",
    connector="connectors.salesforce.connector:SalesforceConnector",
    blueprints=("connectors.salesforce.install:install",),
    receiver="connectors.salesforce.webhooks:RECEIVER",
    cli="connectors.salesforce.cli",
    setup_job="connectors.salesforce.jobs:setup_org",
    settings=SETTINGS,
    cron=("connectors.salesforce.poll:poll_all",),
)
