"""Process-wide configuration shared by the web app, RQ workers and the CLI."""

from __future__ import annotations

import logging

from app.core import crypto, db
from app.core.settings import Settings

_settings: Settings | None = None


def configure(settings: Settings) -> Settings:
    """Install settings: database engine, encryption keys, logging."""
    global _settings
    from app.core import tenants

    db.configure(settings.database_url)
    tenants.clear_caches()
    crypto.configure(settings.secret_keys)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _settings = settings
    return settings


def current() -> Settings:
    """The installed settings; a worker process that was never configured reads them from the environment."""
    return _settings if _settings is not None else configure(Settings.from_env())
