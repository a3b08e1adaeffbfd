"""Process set-up, called explicitly by each entry point: the web factory, the RQ worker and cron
config modules, and the CLI. Nothing configures itself lazily from inside the database layer."""

from __future__ import annotations

import logging

from app.core import caches, crypto, db
from app.core.settings import Settings

_settings: Settings | None = None


class NotConfigured(RuntimeError):
    """A process used the database or the settings before its entry point called configure()."""


def configure(settings: Settings, *, need_secret_key: bool = True) -> Settings:
    """Validate and install settings: database engine, encryption keys, caches, logging.

    Raises ConfigError (one line naming the variable) for a missing or malformed setting.
    """
    global _settings
    settings.validate(need_secret_key=need_secret_key)
    db.configure(settings.database_url)
    caches.clear_all()
    crypto.configure(settings.secret_keys)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _settings = settings
    return settings


def current() -> Settings:
    """The installed settings (NotConfigured if this process's entry point did not call configure())."""
    if _settings is None:
        raise NotConfigured(
            "Switchboard is not configured in this process: its entry point must call "
            "app.core.bootstrap.configure() (the web factory, jobs.rq_config, jobs.cron and the CLI do)"
        )
    return _settings
