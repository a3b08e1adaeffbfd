"""The newcomer path: `switchboard run` on embedded defaults, then `switchboard simulate` fills the CRM.

Runs the real console script in a subprocess (gunicorn, an RQ worker with scheduler, rq cron and the bundled
Redis, all on SQLite under a temporary var/), not the test database fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.slow
def test_run_then_simulate_fills_the_builtin_crm(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SWITCHBOARD_SECRET_KEY", "PUBLIC_BASE_URL")
    }
    env.update(SWITCHBOARD_VAR_DIR=str(tmp_path / "var"), SWEEP_INTERVAL_SECONDS="2", NO_PROXY="127.0.0.1")
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "switchboard"), "run", "--port", str(port), "--web-workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            time.sleep(0.3)
        else:
            pytest.fail("service did not become ready:\n" + (tmp_path / "run.log").read_text())
        key = (tmp_path / "var" / "demo-api-key").read_text().strip()
        assert key in (tmp_path / "run.log").read_text()  # told where to look

        sim = subprocess.run(
            [str(BIN / "switchboard"), "simulate", "--seed", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert "ERR" not in sim.stdout, sim.stdout

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, page = _get(f"{base}/api/v1/interactions?limit=200", key)
            assert status == 200
            states = {i["crm"]["state"] for i in page["data"]}
            if page["data"] and states <= {"synced", "skipped"}:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"interactions never synced: {states}\n" + (tmp_path / "run.log").read_text())
        assert len(page["data"]) == 9  # 5 calls and 4 texts
        statuses = {i["status"] for i in page["data"] if i["channel"] == "call"}
        assert statuses <= {"completed", "missed", "voicemail"}
        status, contacts = _get(f"{base}/api/v1/contacts", key)
        assert status == 200 and len(contacts["data"]) >= 5  # 3 demo contacts + 2 new callers
        timelines = [_get(f"{base}/api/v1/contacts/{c['id']}", key)[1]["timeline"] for c in contacts["data"]]
        assert sum(len(t) for t in timelines) == 9  # every interaction on exactly one timeline
        # the demo runs the default automations: the text asking about pricing became a task
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            details = [_get(f"{base}/api/v1/contacts/{c['id']}", key)[1] for c in contacts["data"]]
            subjects = [t["subject"] for d in details for t in d["tasks"]]
            if any("asked about pricing" in x for x in subjects):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no automation task: {subjects}\n" + (tmp_path / "run.log").read_text())
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.close()
    # everything it started is gone, the bundled Redis included
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "var")], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
