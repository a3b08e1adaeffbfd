"""Alias for jobs queued before 0.2 under `jobs.hubspot.setup_portal` (RQ stores the dotted path)."""

from connectors.hubspot.jobs import setup_portal

__all__ = ["setup_portal"]
