"""HubSpot: connector, OAuth tokens, install flow, webhooks, jobs and CLI, in one home."""
