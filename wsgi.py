"""WSGI entry point: `gunicorn wsgi:app`. A missing or malformed setting stops it with one line, exit 2."""

import sys

from app.core.settings import ConfigError
from app.web import create_app

try:
    app = create_app()
except ConfigError as exc:
    print(f"switchboard: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
