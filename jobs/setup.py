"""Set-up for the RQ entry points (`rq worker -c jobs.rq_config`, `rq cron jobs.cron`): configure the
process explicitly from the environment, or stop with one line naming the setting and exit code 2."""

from __future__ import annotations

import sys

from app.core import bootstrap
from app.core.settings import ConfigError, Settings


def configure_from_env() -> Settings:
    """Validate and install the settings, or exit 2 with the reason on stderr (no traceback)."""
    try:
        return bootstrap.configure(Settings.from_env())
    except ConfigError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
