"""The tenant settings Salesforce reads, declared for the registry (`switchboard tenant set|get`).

No SDK import here: the registry loads this with PROVIDER.
"""

from __future__ import annotations

from typing import Any

from connectors import Setting


def _share(value: Any) -> bool:
    return 0 < value <= 1


def _seconds(value: Any) -> bool:
    return 30 <= value <= 86400


SETTINGS: dict[str, Setting] = {
    "salesforce_match_prefer": Setting(
        "Contact", "which wins when a Contact and a Lead share the number", choices=("Contact", "Lead")
    ),
    "salesforce_create_as": Setting(
        "Lead",
        "what an unknown number becomes (unknown_contacts skip: nothing)",
        choices=("Lead", "Contact"),
    ),
    "salesforce_api_share": Setting(
        0.5,
        "share of the org's daily API allocation non-urgent work may run up to",
        check=_share,
        rule="a number above 0 and at most 1, e.g. 0.5",
    ),
    "salesforce_poll": Setting(
        "auto",
        "poll the org for stage, owner and new-Lead changes by SystemModstamp: auto (unless a Flow sent an "
        "Outbound Message in the last 7 days), on, off",
        choices=("auto", "on", "off"),
    ),
    "salesforce_poll_seconds": Setting(
        60,
        "seconds between two polls of the org (each poll is one API request when nothing changed)",
        check=_seconds,
        rule="whole seconds from 30 to 86400",
    ),
}
DEFAULTS: dict[str, Any] = {key: setting.default for key, setting in SETTINGS.items()}
