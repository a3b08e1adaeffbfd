"""What the dialer tests share: the app served over real HTTP (so the Twilio emulator's signed callbacks reach
our webhooks), the emulator account of the fixture tenant, and a rep session."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from app.core import caches, db
from app.core.models import Interaction, Tenant, User
from app.web import create_app, reps
from emulators.base import QuietHandler
from emulators.twilio import TwilioEmulator
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN

OUR = "+15555550100"
REP_PHONE = "+15555550199"
JORDAN = "+15555550123"
CONNECTED = "f240bbac-87c9-4f6e-bf70-924b57d47db7"
NO_ANSWER = "73a0d17f-1163-4015-bdd5-ec830791da20"


class LiveApp:
    """Our Flask app on 127.0.0.1 (threaded), its PUBLIC_BASE_URL the address it serves, Twilio's API the
    emulator: the emulator's callbacks are signed for, and posted to, this address."""

    def __init__(self, settings: Any, emu: TwilioEmulator) -> None:
        self.server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=QuietHandler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.settings = settings.with_(public_base_url=self.base, twilio_api_base=emu.base_url)
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _wsgi(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# Named fixtures, so a test module imports `live_fixture` and its tests take `live` (ruff sees no shadowing).
@pytest.fixture(scope="session", name="twilio_emu")
def twilio_emu_fixture() -> Iterator[TwilioEmulator]:
    emu = TwilioEmulator()
    emu.start()
    yield emu
    emu.stop()


def reset_emulator(emu: TwilioEmulator, *numbers: str) -> None:
    emu.reset()
    emu.create_account(FIXTURE_ACCOUNT, FIXTURE_TOKEN)
    for number in (OUR, *numbers):
        emu.add_number(FIXTURE_ACCOUNT, number)


@pytest.fixture(name="live")
def live_fixture(app: Any, settings: Any, twilio_emu: TwilioEmulator) -> Iterator[LiveApp]:
    """The app over HTTP on empty tables (the `app` fixture empties them) and a fresh emulator account."""
    reset_emulator(twilio_emu)
    served = LiveApp(settings, twilio_emu)
    caches.clear_all()
    yield served
    served.close()


def user(email: str) -> User:
    with db.transaction() as s:
        found = s.scalar(select(User).where(User.email == email))
        assert found is not None
        s.expunge(found)
        return found


def session_for(settings: Any, tenant: Tenant, email: str) -> dict[str, str]:
    """The Authorization header of a rep session for the user with this email."""
    token = reps.issue(settings.secret_keys[0], tenant.id, user(email).id)
    return {"Authorization": f"Rep {token}"}


def interaction(call_id: int) -> Interaction:
    with db.transaction() as s:
        row = s.get(Interaction, call_id)
        assert row is not None
        s.expunge(row)
        return row


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json()  # type: ignore[no-any-return]


def delivered(deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every callback the emulator sent was accepted (200 TwiML or 204)."""
    assert deliveries, "the emulator sent no callback"
    assert all(d["status"] in (200, 204) for d in deliveries), [(d["url"], d["status"]) for d in deliveries]
    return deliveries
