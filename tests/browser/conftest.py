"""Browser-test fixtures: Debian's chromium driven by Playwright for Python, the app on a real server, and
stand-in CRM hosts (HubSpot's side of the Calling Extensions SDK, Salesforce's window.sforce.opencti).

Our own fixture, not pytest-playwright (its deprecation warning breaks filterwarnings=error), and never
`playwright install` (it downloads a browser): CHROMIUM, else /usr/bin/chromium. Without a browser the tests
skip locally with a notice saying how to install one, and fail under CI (CI set), like PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from werkzeug.serving import make_server

from app.core import caches
from app.web import create_app
from emulators.base import QuietHandler, ServedApp
from emulators.twilio import TwilioEmulator
from tests.web.dialer_support import reset_emulator, twilio_emu_fixture  # noqa: F401  (twilio_emu)

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "app/web/static/vendor/calling-extensions-sdk-0.9.7/main.js"
HOSTS = Path(__file__).parent / "hosts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NO_BROWSER = "no chromium found (set CHROMIUM or `apt-get install -y chromium`): the browser tests need it"


def chromium_path() -> str | None:
    """CHROMIUM when set (and only it), else Debian's chromium on PATH or at /usr/bin/chromium."""
    given = os.environ.get("CHROMIUM")
    candidates = [given] if given else [shutil.which("chromium"), "/usr/bin/chromium"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _no_browser(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests are required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium for the session."""
    path = chromium_path()
    if path is None:
        _no_browser(NO_BROWSER)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install -e '.[dev]')")
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
    except Exception as exc:
        pw.stop()
        _no_browser(f"chromium at {path} did not start: {exc}")
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies or storage carried over) and its page."""
    context = browser.new_context(viewport={"width": 900, "height": 760})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


class CrmHost(ServedApp):
    """The stand-in CRM pages on 127.0.0.1 (a different origin from the dialer's localhost): HubSpot's host
    built on the SDK's own IFrameManager, and a Salesforce page whose Open CTI script is a recording stub."""

    name = "crm-host"

    def __init__(self) -> None:
        super().__init__()
        self.app = Flask("tests.browser.hosts")

        @self.app.get("/<name>.html")
        def host_page(name: str) -> Response:
            return Response((HOSTS / f"{name}.html").read_text(), mimetype="text/html")

        @self.app.get("/sdk.js")
        def sdk() -> Response:
            return Response(SDK.read_text(), mimetype="text/javascript")

        @self.app.get("/opencti_min.js")
        def opencti() -> Response:
            # Salesforce serves it only from the org domain; the dialer loads it from SALESFORCE_OPENCTI_URL.
            return Response((HOSTS / "opencti_stub.js").read_text(), mimetype="text/javascript")

        @self.app.after_request
        def no_cache(response: Response) -> Response:
            response.headers["Cache-Control"] = "no-store"
            return response


@pytest.fixture(scope="session")
def crm_host() -> Iterator[CrmHost]:
    host = CrmHost()
    host.start()
    yield host
    host.stop()


class Served:
    """Our app on a real threaded server; the browser opens it as http://localhost:PORT (another origin than
    the CRM host's 127.0.0.1), while PUBLIC_BASE_URL is http://127.0.0.1:PORT (for signed callbacks)."""

    def __init__(
        self, settings: Any, crm_host: CrmHost, twilio: TwilioEmulator | None = None, **overrides: Any
    ) -> None:
        self.server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=QuietHandler)
        port = self.server.server_port
        self.base = f"http://localhost:{port}"
        changes = {
            "public_base_url": f"http://127.0.0.1:{port}",
            "dialer_frame_ancestors": (crm_host.base_url,),
            "salesforce_opencti_url": f"{crm_host.base_url}/opencti_min.js",
        }
        if twilio is not None:
            changes["twilio_api_base"] = twilio.base_url
        self.settings = settings.with_(**{**changes, **overrides})
        self.app = create_app(self.settings)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _wsgi(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def serve(app: Any, settings: Any, crm_host: CrmHost, twilio_emu: TwilioEmulator) -> Iterator[Any]:
    """Start the app over HTTP (settings overrides as keywords), on the empty tables the `app` fixture
    leaves, its Twilio API the emulator (a fresh account for the fixture tenant)."""
    started: list[Served] = []

    def start(**overrides: Any) -> Served:
        reset_emulator(twilio_emu)
        live = Served(settings, crm_host, twilio_emu, **overrides)
        caches.clear_all()
        started.append(live)
        return live

    yield start
    for live in started:
        live.close()


@pytest.fixture
def served(serve: Any) -> Served:
    """The app over HTTP with the default test settings."""
    return serve()  # type: ignore[no-any-return]
