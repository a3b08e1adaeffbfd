"""Each entry point configures itself explicitly; a missing or malformed setting stops it with one line
naming the variable and exit code 2 (no traceback): the RQ worker, cron, and the web app's WSGI module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core import bootstrap, db

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(tmp_path: Path, **changes: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SWITCHBOARD_SECRET_KEY", "DATABASE_URL", "REDIS_URL")
    }
    env.update({"SWITCHBOARD_VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    return {**env, **changes}


KEY = "x9-0L2yNRxbqhffA2mIuM2AHHVUAsp3ZmLmHtiU-Eo8="  # the tests' Fernet key
ENTRY_POINTS = {
    "worker": [str(BIN / "rq"), "worker", "-c", "jobs.rq_config", "--burst", "switchboard-none"],
    "cron": [sys.executable, "-c", "import jobs.cron"],
    "web": [sys.executable, "-c", "import wsgi"],
}
CASES = {
    "no key": ({}, "SWITCHBOARD_SECRET_KEY is not set"),
    "bad key": ({"SWITCHBOARD_SECRET_KEY": "not-a-key"}, "SWITCHBOARD_SECRET_KEY is not a Fernet key"),
    "bad database": (
        {
            "SWITCHBOARD_SECRET_KEY": "x9-0L2yNRxbqhffA2mIuM2AHHVUAsp3ZmLmHtiU-Eo8=",
            "DATABASE_URL": "nonsense",
        },
        "DATABASE_URL is not a database URL",
    ),
    "bad redis": (
        {"SWITCHBOARD_SECRET_KEY": KEY, "REDIS_URL": "http://x"},
        "REDIS_URL is not a Redis URL",
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_setting_is_one_line_and_exit_2(entry: str, case: str, tmp_path: Path) -> None:
    changes, message = CASES[case]
    done = subprocess.run(
        ENTRY_POINTS[entry],
        cwd=ROOT,
        env=_env(tmp_path, **changes),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0] and lines[0].startswith("switchboard: ")


def test_the_database_layer_never_configures_itself() -> None:
    saved = db._engine, db._url, bootstrap._settings
    db._engine, db._url, bootstrap._settings = None, None, None
    try:
        with pytest.raises(db.NotConfigured, match=r"bootstrap\.configure"):
            db.engine()
        with pytest.raises(bootstrap.NotConfigured):
            bootstrap.current()
    finally:
        db._engine, db._url, bootstrap._settings = saved
