"""CRM connectors: a registry from a tenant's `crm` setting to the provider that talks to that CRM.

Each CRM is one home: a module (`connectors/local.py`) or a package (`connectors/hubspot/`) exposing a
`PROVIDER` (a `CrmProvider`). The registry holds import strings, like sentry-python's integrations, so a
tenant on one CRM never imports another CRM's SDK, and the app factory and the CLI build routes, `--crm`
choices, install flows and provider command groups from it. Adding a CRM is one line below (or a
`register()` call, or `SWITCHBOARD_CRM_PLUGINS=name=pkg.module:PROVIDER` for an out-of-tree one).

A provider also declares its tenant settings (`CrmProvider.settings`: key -> Setting, with the default, the
check and a help line), so `switchboard tenant set|get` takes them with no edit to the core.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from app.core.models import Tenant
from app.core.tenants import DEFAULT_SETTINGS
from connectors.base import Connector

REGISTRY: dict[str, str] = {
    "local": "connectors.local:PROVIDER",
    "hubspot": "connectors.hubspot:PROVIDER",
    "salesforce": "connectors.salesforce:PROVIDER",
}


@dataclass(frozen=True)
class Setting:
    """A tenant setting a CRM brings: its default (whose type a value must have), the allowed `choices` or a
    `check` with the `rule` it enforces (said in the error), and a help line."""

    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], bool] | None = None
    rule: str = ""

    def parse(self, key: str, raw: str) -> Any:
        """The value `raw` stands for (JSON: 30, true, "text"; else the text itself), or ValueError saying
        what `key` takes."""
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"{key} is one of {', '.join(map(str, self.choices))}")
            return value
        kind = type(self.default)
        number = kind is float and isinstance(value, int) and not isinstance(value, bool)
        if type(value) is not kind and not number:
            raise ValueError(f"{key} takes {self.rule or 'a ' + kind.__name__}")
        if self.check is not None and not self.check(value):
            raise ValueError(f"{key} takes {self.rule or 'another value'}")
        return float(value) if number else value


@dataclass(frozen=True)
class CrmProvider:
    """What a CRM brings, as import strings (loaded only when used).

    connector   the Connector class ("pkg.mod:Class"), built with the tenant
    blueprints  Flask blueprints the web app mounts: install flow, OAuth callback ...
    receiver    a CrmEventReceiver for POST /webhooks/<name> (CRM changes for the automations)
    cli         a module with any of: `group` (a click group mounted as `switchboard <name>`),
                `TENANT_OPTIONS` (click options added to `tenant add`) and `configure_tenant(tenant, **opts)`
    setup_job   a job run after an install, e.g. creating custom properties ("pkg.mod:func")
    settings    the tenant settings it reads (key -> Setting), for `switchboard tenant set|get`
    cron        jobs ("pkg.mod:func", no arguments) the cron enqueues every sweep interval, e.g. polling
    """

    name: str
    label: str
    connector: str
    blueprints: tuple[str, ...] = ()
    receiver: str | None = None
    cli: str | None = None
    setup_job: str | None = None
    settings: Mapping[str, Setting] = field(default_factory=dict)
    cron: tuple[str, ...] = ()


def load(target: str) -> Any:
    """Import "package.module:attribute" (or a plain module path)."""
    module, _, attr = target.partition(":")
    loaded = import_module(module)
    return getattr(loaded, attr) if attr else loaded


def register(name: str, target: str) -> None:
    """Add (or replace) a CRM provider at runtime: `target` is "package.module:PROVIDER"."""
    REGISTRY[name] = target


def _plugins_from_env() -> None:
    for item in os.environ.get("SWITCHBOARD_CRM_PLUGINS", "").split(","):
        name, sep, target = item.strip().partition("=")
        if sep and name and target:
            REGISTRY.setdefault(name, target)


def names() -> list[str]:
    """The CRM names a tenant can use, in registry order."""
    _plugins_from_env()
    return list(REGISTRY)


def provider(name: str) -> CrmProvider:
    """The provider registered under `name` (LookupError if none)."""
    _plugins_from_env()
    try:
        target = REGISTRY[name]
    except KeyError:
        raise LookupError(f"unknown CRM {name!r}; known: {', '.join(REGISTRY)}") from None
    spec = load(target)
    if not isinstance(spec, CrmProvider):
        raise TypeError(f"{target} is not a CrmProvider")
    return spec


def providers() -> list[CrmProvider]:
    """Every registered provider."""
    return [provider(name) for name in names()]


def preload() -> None:
    """Import every registered connector, and what each reaches lazily (a `preload()` classmethod), in the
    worker's main process: RQ forks a work horse per job, which then inherits them instead of importing."""
    for spec in providers():
        warm = getattr(load(spec.connector), "preload", None)
        if callable(warm):
            warm()


def get_connector(tenant: Tenant) -> Connector:
    """The connector for the tenant's CRM."""
    try:
        spec = provider(tenant.crm)
    except LookupError:
        raise LookupError(f"tenant {tenant.id} uses unknown CRM {tenant.crm!r}") from None
    return load(spec.connector)(tenant)  # type: ignore[no-any-return]


def tenant_settings(tenant: Tenant, crm: str | None = None) -> dict[str, Any]:
    """The tenant's settings with every default filled in: the core's and those its CRM (or `crm`, for a
    connector registered under another name) declares."""
    try:
        declared = provider(crm or tenant.crm).settings
    except LookupError:
        declared = {}
    return {**DEFAULT_SETTINGS, **{k: s.default for k, s in declared.items()}, **(tenant.settings or {})}
