"""What the benchmark scripts share: a throwaway PostgreSQL database and the emulators' control API."""

from __future__ import annotations

import json
import urllib.request
import uuid

from sqlalchemy import create_engine, text

from app.core.settings import database_url_for_sqlalchemy


def scratch_postgres(admin_url: str, prefix: str = "switchboard_bench") -> tuple[str, str] | None:
    """(URL, name) of a fresh database beside `admin_url`'s, or None when PostgreSQL is not reachable."""
    try:
        engine = create_engine(database_url_for_sqlalchemy(admin_url), isolation_level="AUTOCOMMIT")
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
    except Exception:
        return None
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def control(base: str, action: str, *, timeout: float = 60, **kwargs: object) -> dict:
    """POST to an emulator's control API (`/_emulator/<action>`) and return its JSON answer."""
    req = urllib.request.Request(
        f"{base}/_emulator/{action}",
        data=json.dumps(kwargs).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def get_json(url: str, timeout: float = 60) -> dict:
    """GET a JSON document."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]
