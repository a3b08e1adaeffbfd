"""Redis Sentinel (the failover RQ supports): webhooks enqueue and workers run through a real sentinel."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.cli.devrunner import redis_server_binary
from app.core.models import LocalActivity
from app.web import create_app
from tests.conftest import PUBLIC_BASE, count
from tests.signing import FIXTURE_TOKEN, TwilioPoster


@pytest.fixture
def sentinel(redis_url: str, tmp_path: Path):
    """A redis-server in sentinel mode watching the test Redis as master 'mymaster'."""
    target = urlsplit(redis_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster {target.hostname} {target.port or 6379} 1\n"
    )
    proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_webhook_and_worker_through_sentinel(settings, tenant, sentinel, run_worker):
    app = create_app(settings.with_(redis_sentinels=(sentinel,), redis_url=settings.redis_url))
    poster = TwilioPoster(app.test_client(), PUBLIC_BASE, FIXTURE_TOKEN)
    assert poster.fixture("/webhooks/twilio/sms", "sms__inbound").status_code == 200
    assert app.test_client().get("/readyz").json["checks"]["redis"] is True
    assert run_worker() == 1  # the job reached the master the sentinel names
    assert count(LocalActivity) == 1
