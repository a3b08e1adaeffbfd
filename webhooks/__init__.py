"""Channel webhook receivers: one module per provider (verify -> parse -> plan -> reply), in a registry.

The web layer mounts POST /webhooks/<provider>/<stream> for each registered Receiver (webhooks.base);
CRMs' change notifications are CrmEventReceivers that live in their connector package (connectors/).
"""

from __future__ import annotations

from importlib import import_module

from webhooks.base import Receiver

# Import strings, like the CRM registry: adding a channel provider is its module and one line here.
REGISTRY: dict[str, str] = {
    "twilio": "webhooks.twilio:RECEIVER",
    "sendgrid": "webhooks.sendgrid:RECEIVER",
    "mailgun": "webhooks.mailgun:RECEIVER",
}


def register(name: str, target: str) -> None:
    """Add (or replace) a channel receiver: `target` is "package.module:RECEIVER"."""
    REGISTRY[name] = target


def receivers() -> dict[str, Receiver]:
    """Every registered receiver, by provider name."""
    out = {}
    for name, target in REGISTRY.items():
        module, _, attr = target.partition(":")
        out[name] = getattr(import_module(module), attr)
    return out
