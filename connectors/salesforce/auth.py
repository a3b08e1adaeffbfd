"""Salesforce credentials of a tenant: OAuth tokens (web server flow) refreshed when Salesforce ends the
session.

Salesforce access tokens carry no lifetime (it is the org's session timeout), so we refresh when a request
answers 401 INVALID_SESSION_ID: under a Redis lock, so that concurrent workers refresh once (the others wait,
then read the new token from the database), and the request is retried once. A refresh token Salesforce no
longer accepts (invalid_grant: revoked, or the app uninstalled) marks the tenant needs_reinstall and fails the
work as permanent. https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_flow.htm
Tokens are stored encrypted (tenants.crm_secrets, Fernet) and never logged. Written with `requests`:
simple-salesforce has no authorization-code or refresh grant.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests
from redis import Redis

from app.core import db
from app.core.models import Tenant
from app.core.settings import Settings
from connectors.base import PermanentError, RetryableError

log = logging.getLogger(__name__)

TIMEOUT = (5, 30)


def secrets_of(tenant: Tenant) -> dict[str, Any]:
    """The tenant's decrypted Salesforce credentials."""
    return json.loads(tenant.crm_secrets or "{}")


def session_secrets(access_token: str, instance_url: str) -> str:
    """crm_secrets for a session token obtained elsewhere (JWT bearer flow, `sf org display`): never
    refreshed."""
    return json.dumps(
        {"type": "session", "access_token": access_token, "instance_url": instance_url.rstrip("/")}
    )


def oauth_secrets(
    token_response: dict[str, Any], login_url: str, previous: dict[str, Any] | None = None
) -> str:
    """crm_secrets from a token response; a refresh response has no refresh_token, so the previous one
    stays."""
    previous = previous or {}
    org_id, user_id = identity(token_response.get("id") or "") or (
        previous.get("org_id"),
        previous.get("user_id"),
    )
    return json.dumps(
        {
            "type": "oauth",
            "access_token": token_response["access_token"],
            "refresh_token": token_response.get("refresh_token") or previous.get("refresh_token"),
            "instance_url": str(token_response.get("instance_url") or previous.get("instance_url")).rstrip(
                "/"
            ),
            "org_id": org_id,
            "user_id": user_id,
            "login_url": login_url.rstrip("/"),
        }
    )


def identity(id_url: str) -> tuple[str, str] | None:
    """(org id, user id) from the token response's identity URL
    https://login.salesforce.com/id/00D.../005..."""
    parts = id_url.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2].startswith("00D") and parts[-1].startswith("005"):
        return parts[-2], parts[-1]
    return None


class NeedsReinstall(PermanentError):
    """Salesforce refused the refresh token: an admin must connect the org again."""


def token_request(login_url: str, form: dict[str, str]) -> dict[str, Any]:
    """POST /services/oauth2/token; raises NeedsReinstall on invalid_grant, PermanentError on other 4xx,
    RetryableError when Salesforce is unreachable or answers 5xx."""
    try:
        response = requests.post(f"{login_url.rstrip('/')}/services/oauth2/token", data=form, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise RetryableError(f"Salesforce token endpoint unreachable: {type(exc).__name__}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise RetryableError(f"Salesforce token endpoint answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        error = str(body.get("error") or "")
        if error == "invalid_grant":
            raise NeedsReinstall(str(body.get("error_description") or "invalid_grant"))
        raise PermanentError(
            f"Salesforce token endpoint refused the request: {error or response.status_code}"
        )
    if not body.get("access_token"):
        raise PermanentError("Salesforce token response had no access_token")
    return body  # type: ignore[no-any-return]


class SalesforceTokens:
    """Hands out the tenant's access token and instance URL, refreshing once when Salesforce ends the
    session."""

    def __init__(self, tenant_id: int, settings: Settings, redis: Redis) -> None:
        self.tenant_id = tenant_id
        self.settings = settings
        self.redis = redis
        self._secrets: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        with db.transaction() as s:
            tenant = s.get(Tenant, self.tenant_id)
            if tenant is None:
                raise PermanentError(f"tenant {self.tenant_id} is gone")
            if tenant.crm_status != "ok":
                raise NeedsReinstall(tenant.crm_status_reason or tenant.crm_status)
            self._secrets = secrets_of(tenant)
        if not self._secrets.get("access_token") or not self._secrets.get("instance_url"):
            raise PermanentError(
                "tenant has no Salesforce credentials; connect the org: GET /install/salesforce"
            )
        return self._secrets

    def current(self) -> dict[str, Any]:
        """The stored credentials: access_token, instance_url (and the refresh token for OAuth installs)."""
        return self._secrets or self._load()

    def refresh(self, stale: str) -> dict[str, Any]:
        """Salesforce ended the session of `stale`: refresh it, unless another worker already replaced it."""
        lock = self.redis.lock(
            f"switchboard:lock:salesforce-refresh:{self.tenant_id}", timeout=60, blocking_timeout=60
        )
        if not lock.acquire():
            raise RetryableError("another worker is refreshing the Salesforce token")
        try:
            secrets = self._load()
            if secrets["access_token"] != stale:
                return secrets  # someone refreshed while we waited for the lock
            if secrets.get("type") != "oauth" or not secrets.get("refresh_token"):
                raise PermanentError(
                    "Salesforce ended the session and there is no refresh token; connect the org again "
                    "(GET /install/salesforce) or set a new token"
                )
            login_url = secrets.get("login_url") or self.settings.salesforce_login_url
            form = {
                "grant_type": "refresh_token",
                "refresh_token": secrets["refresh_token"],
                "client_id": self.settings.salesforce_client_id or "",
                "client_secret": self.settings.salesforce_client_secret or "",
            }
            try:
                response = token_request(login_url, form)
            except NeedsReinstall:
                reason = "Salesforce refused the refresh token (revoked or expired); connect the org again"
                mark_needs_reinstall(self.tenant_id, reason)
                raise NeedsReinstall(reason) from None
            stored = oauth_secrets(response, login_url, previous=secrets)
            with db.transaction() as s:
                tenant = s.get(Tenant, self.tenant_id)
                assert tenant is not None
                tenant.crm_secrets = stored
            log.info("salesforce.token_refreshed tenant=%s", self.tenant_id)
            self._secrets = json.loads(stored)
            return self._secrets
        finally:
            lock.release()


def mark_needs_reinstall(tenant_id: int, reason: str) -> None:
    """Flag the tenant so every job fails fast with the reason until the org is connected again."""
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is not None:
            tenant.crm_status, tenant.crm_status_reason = "needs_reinstall", reason
    log.warning("salesforce.needs_reinstall tenant=%s", tenant_id)
