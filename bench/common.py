"""What the benchmark scripts share: the Procfile's command lines, a throwaway PostgreSQL database and the
emulators' control API."""

from __future__ import annotations

import atexit
import json
import re
import shlex
import sys
import urllib.request
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from app.core.settings import database_url_for_sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def procfile(env: dict[str, str]) -> dict[str, list[str]]:
    """The Procfile's command lines, ${VAR:-default} expanded from env, console scripts from this venv."""
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        name, cmd = line.split(":", 1)

        def expand(m: re.Match[str]) -> str:
            return env.get(m.group(1)) or (m.group(3) or "")

        argv = shlex.split(re.sub(r"\$\{(\w+)(:-([^}]*))?\}", expand, cmd))
        if argv[0] == "python":
            argv[0] = sys.executable
        elif (BIN / argv[0]).exists():
            argv[0] = str(BIN / argv[0])
        out[name.strip()] = argv
    return out


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
    atexit.register(drop_scratch, admin_url, name)  # benchmarks used to leave their databases behind
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def drop_scratch(admin_url: str, name: str) -> None:
    """Drop a database scratch_postgres made (its connections too); quiet if it is gone already."""
    try:
        engine = create_engine(database_url_for_sqlalchemy(admin_url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
    except Exception:
        pass


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
