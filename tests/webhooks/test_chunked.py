"""Chunked webhook bodies (Transfer-Encoding: chunked, no Content-Length): over MAX_BODY_BYTES is 413, as
with a Content-Length, not a body cut at the limit that then fails its signature (403); under the limit is
accepted whole. Nothing of a refused request is stored. Both databases, a real Redis, real signatures; the
test client marks the stream as ended by the server (wsgi.input_terminated) as gunicorn does, and one case
goes through a real gunicorn."""

from __future__ import annotations

import http.client
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from app.core import db
from app.core.models import Interaction
from app.core.settings import MAX_BODY_BYTES
from tests.conftest import PUBLIC_BASE, TEST_KEY, count
from tests.signing import FIXTURE_TOKEN, fixture_params
from tests.webhooks.test_bad_input import SMS, assert_nothing_stored, json_error

ROOT = Path(__file__).resolve().parents[2]


def _signed(body: str) -> dict[str, str]:
    signature = RequestValidator(FIXTURE_TOKEN).compute_signature(
        PUBLIC_BASE + SMS, dict(parse_qsl(body, keep_blank_values=True))
    )
    return {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
        "Transfer-Encoding": "chunked",
    }


def _sms_body(size: int) -> str:
    base = urlencode({k: v for k, v in fixture_params("sms__inbound").items() if k != "Body"})
    return base + "&Body=" + "x" * (size - len(base) - len("&Body="))


def _post_chunked(client: Any, body: str) -> Any:
    return client.post(
        SMS,
        input_stream=io.BytesIO(body.encode()),
        headers=_signed(body),
        base_url=PUBLIC_BASE,
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_signed_chunked_body_over_the_limit_is_413_and_stores_nothing(tenant, client, settings, redis_conn):
    body = _sms_body(2 * MAX_BODY_BYTES)
    json_error(_post_chunked(client, body), 413)
    assert_nothing_stored(settings, redis_conn)


def test_chunked_body_one_byte_over_the_limit_is_413(tenant, client, settings, redis_conn):
    json_error(_post_chunked(client, _sms_body(MAX_BODY_BYTES + 1)), 413)
    assert_nothing_stored(settings, redis_conn)


@pytest.mark.parametrize("size", [2000, MAX_BODY_BYTES])
def test_chunked_body_within_the_limit_is_read_whole(tenant, client, size):
    r = _post_chunked(client, _sms_body(size))
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    with db.transaction() as s:
        [body] = s.scalars(select(Interaction.body)).all()
    assert len(body) == size - len(_sms_body(0))  # all of it, not the first MAX_BODY_BYTES


# --- through a real gunicorn ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gunicorn(tenant, settings, tmp_path) -> Any:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SWITCHBOARD_SECRET_KEY": TEST_KEY,
        "PUBLIC_BASE_URL": PUBLIC_BASE,
        "LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "gunicorn.log"
    command = [str(Path(sys.executable).parent / "gunicorn"), "--workers", "1", "--bind", f"127.0.0.1:{port}"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, "wsgi:app"], cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(log.read_text())
            time.sleep(0.1)
    yield port, log
    proc.terminate()
    proc.wait(timeout=10)


def _send_chunked(port: int, body: str, chunk: int = 64 * 1024) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body.encode()
    headers = {**_signed(body), "Host": urlsplit(PUBLIC_BASE).netloc}
    chunks = (data[i : i + chunk] for i in range(0, len(data), chunk))
    conn.request("POST", SMS, body=chunks, headers=headers, encode_chunked=True)
    r = conn.getresponse()
    out = (r.status, r.read())
    conn.close()
    return out


def test_through_gunicorn_chunked_over_the_limit_is_413_and_under_is_accepted(gunicorn, settings, redis_conn):
    port, log = gunicorn
    status, text = _send_chunked(port, _sms_body(2 * MAX_BODY_BYTES))
    assert status == 413, (text[:500], log.read_text()[-3000:])
    assert_nothing_stored(settings, redis_conn)
    status, text = _send_chunked(port, _sms_body(5000))
    assert status == 200, (text[:500], log.read_text()[-3000:])
    assert count(Interaction) == 1
