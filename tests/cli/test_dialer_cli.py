"""The dialer's commands: `user login-link`, `hubspot register-calling` (over HTTP against the HubSpot
emulator, with the real hubspot-api-client) and `salesforce call-center`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from app.cli import main
from app.web import create_app
from emulators.hubspot import HubSpotEmulator
from tests.conftest import PUBLIC_BASE


def invoke(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(main, args=list(args))


def test_login_link_prints_a_one_time_link(app, tenant):
    result = invoke(app, "user", "login-link", "Avery@acme.example", "--tenant", "acme", "--crm", "hubspot")
    assert result.exit_code == 0, result.output
    link = result.stdout.strip()
    assert link.startswith(f"{PUBLIC_BASE}/dialer/login/")
    client = app.test_client()
    assert client.get(link.removeprefix(PUBLIC_BASE)).status_code == 200
    assert client.get(link.removeprefix(PUBLIC_BASE)).status_code == 410


def test_login_link_answers_to_the_contracts_spelling_too(app, tenant):
    result = invoke(app, "users", "login-link", "avery@acme.example", "--tenant", "acme")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(f"{PUBLIC_BASE}/dialer/login/")
    assert "users" not in invoke(app, "--help").stdout.split()  # unlisted: `user` is the group


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nobody@acme.example", "--tenant", "acme"), "acme has no user nobody@acme.example"),
        (("avery@acme.example", "--tenant", "nope"), "nope"),
    ],
)
def test_login_link_errors_are_one_line(app, tenant, args, message):
    result = invoke(app, "user", "login-link", *args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def hubspot() -> Iterator[HubSpotEmulator]:
    emu = HubSpotEmulator()
    emu.base_url = emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def developer(hubspot: HubSpotEmulator, settings: Any, app: Any) -> dict[str, Any]:
    hubspot.reset()
    info = {**hubspot.create_app(), **hubspot.add_developer_key()}
    info["app"] = create_app(settings.with_(hubspot_api_base=hubspot.base_url))
    return info


def register(developer: dict[str, Any], *extra: str) -> Any:
    return invoke(
        developer["app"],
        "hubspot",
        "register-calling",
        "--app-id",
        str(developer["app_id"]),
        "--developer-api-key",
        developer["developer_api_key"],
        *extra,
    )


def test_register_calling_creates_then_updates_the_apps_calling_settings(hubspot, developer):
    first = register(developer)
    assert first.exit_code == 0, first.output
    assert f"registered for app {developer['app_id']}: {PUBLIC_BASE}/dialer?crm=hubspot" in first.stdout
    stored = hubspot.calling_settings[developer["app_id"]]
    assert stored["url"] == f"{PUBLIC_BASE}/dialer?crm=hubspot"
    assert (stored["name"], stored["width"], stored["height"]) == ("Switchboard", 400, 600)
    assert stored["isReady"] is True and stored["supportsInboundCalling"] is True
    assert stored["usesCallingWindow"] is False

    again = register(developer, "--name", "Acme dialer", "--height", "640", "--not-ready")
    assert again.exit_code == 0, again.output
    assert "updated" in again.stdout
    stored = hubspot.calling_settings[developer["app_id"]]
    assert (stored["name"], stored["height"], stored["isReady"]) == ("Acme dialer", 640, False)
    routes = [r["route"] for r in hubspot.requests()]
    assert routes.count("POST /crm/v3/extensions/calling/{app_id}/settings") == 1
    assert routes.count("PATCH /crm/v3/extensions/calling/{app_id}/settings") == 1


def test_register_calling_sends_the_developer_key_as_hapikey(hubspot, developer):
    assert register(developer).exit_code == 0
    assert all("hapikey" not in r["path"] for r in hubspot.requests())  # a query parameter, not the path
    bad = {**developer, "developer_api_key": "wrong"}
    result = register(bad)
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: HubSpot refused the developer API key (401)"


def test_register_calling_for_an_unknown_app_is_one_line(developer):
    result = register({**developer, "app_id": 999})
    assert result.exit_code == 2
    assert "no app 999" in result.stderr
    assert "Traceback" not in result.stderr


def test_register_calling_needs_an_https_url(developer):
    result = register(developer, "--url", "http://dialer.example.com/dialer")
    assert result.exit_code == 2
    assert "https" in result.stderr


def test_register_calling_when_hubspot_is_down(settings, app):
    down = create_app(settings.with_(hubspot_api_base="http://127.0.0.1:9"))
    result = invoke(down, "hubspot", "register-calling", "--app-id", "1", "--developer-api-key", "k")
    assert result.exit_code == 2
    assert "could not be reached" in result.stderr


def test_call_center_prints_the_lightning_definition(app):
    result = invoke(app, "salesforce", "call-center")
    assert result.exit_code == 0, result.output
    root = ET.fromstring(result.stdout)
    items = {item.get("name"): item.text for item in root.iter("item")}
    assert items == {
        "reqInternalName": "SwitchboardDialer",
        "reqDisplayName": "Switchboard",
        "reqAdapterUrl": f"{PUBLIC_BASE}/dialer?crm=salesforce",
        "reqUseApi": "true",
        "reqSoftphoneHeight": "600",
        "reqSoftphoneWidth": "400",
        "reqSalesforceCompatibilityMode": "Lightning",
    }
    assert root.find("section").get("name") == "reqGeneralInfo"
    assert "Call Centers > Import" in result.stderr  # the install steps, off stdout
    assert "Open CTI Softphone" in result.stderr


def test_call_center_escapes_the_url_and_checks_its_names(app):
    result = invoke(
        app,
        "salesforce",
        "call-center",
        "--url",
        "https://sb.example.com/dialer?crm=salesforce&x=1",
        "--name",
        "R&D <phones>",
    )
    assert result.exit_code == 0, result.output
    items = {item.get("name"): item.text for item in ET.fromstring(result.stdout).iter("item")}
    assert items["reqAdapterUrl"] == "https://sb.example.com/dialer?crm=salesforce&x=1"
    assert items["reqDisplayName"] == "R&D <phones>"
    for bad in (
        ("--internal-name", "1dialer"),
        ("--internal-name", "a" * 41),
        ("--url", "http://sb.example.com"),
    ):
        refused = invoke(app, "salesforce", "call-center", *bad)
        assert refused.exit_code == 2
        assert len(refused.stderr.strip().splitlines()) == 1
