"""HubSpot credentials of a tenant: private-app tokens, and OAuth tokens refreshed before they expire.

OAuth access tokens live 30 minutes (https://developers.hubspot.com/docs/api/oauth-quickstart-guide): we
refresh when less than REFRESH_MARGIN is left, under a Redis lock so that concurrent workers refresh
once (the others wait, then read the new token from the database). A refresh token HubSpot no longer
accepts (invalid_grant) marks the tenant as needing re-install and fails the work as permanent.
Tokens are stored encrypted (tenants.crm_secrets, Fernet) and never logged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from hubspot import HubSpot
from redis import Redis

from app.core import db
from app.core.models import Tenant
from app.core.settings import Settings
from connectors.base import PermanentError, RetryableError

log = logging.getLogger(__name__)

REFRESH_MARGIN = 300  # seconds before expiry at which we refresh


def secrets_of(tenant: Tenant) -> dict[str, Any]:
    """The tenant's decrypted HubSpot credentials."""
    return json.loads(tenant.crm_secrets or "{}")


def private_app_secrets(token: str) -> str:
    """crm_secrets for a private-app token."""
    return json.dumps({"type": "private_app", "access_token": token})


def oauth_secrets(token_response: Any) -> str:
    """crm_secrets from an OAuth token response (the SDK's TokenResponseIF or a dict)."""
    get = token_response.get if isinstance(token_response, dict) else lambda k: getattr(token_response, k)
    return json.dumps(
        {
            "type": "oauth",
            "access_token": get("access_token"),
            "refresh_token": get("refresh_token"),
            "expires_at": int(time.time()) + int(get("expires_in")),
        }
    )


class NeedsReinstall(PermanentError):
    """HubSpot revoked the refresh token: an admin must install the app again."""


class HubSpotTokens:
    """Hands out a valid access token for one tenant, refreshing OAuth tokens exactly once when due."""

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
        if not self._secrets.get("access_token"):
            raise PermanentError(
                "tenant has no HubSpot credentials; install the app or set a private-app token"
            )
        return self._secrets

    def access_token(self) -> str:
        """A token good for at least REFRESH_MARGIN seconds."""
        secrets = self._secrets or self._load()
        if secrets.get("type") == "oauth" and secrets.get("expires_at", 0) - time.time() < REFRESH_MARGIN:
            secrets = self.refresh(stale=secrets["access_token"])
        return str(secrets["access_token"])

    def refresh(self, stale: str | None = None) -> dict[str, Any]:
        """Refresh the OAuth token unless another worker already replaced `stale` (then use theirs)."""
        lock = self.redis.lock(
            f"switchboard:lock:hubspot-refresh:{self.tenant_id}", timeout=60, blocking_timeout=60
        )
        if not lock.acquire():
            raise RetryableError("another worker is refreshing the HubSpot token")
        try:
            secrets = self._load()
            if secrets.get("type") != "oauth":
                raise PermanentError("HubSpot rejected the private-app token")
            fresh = secrets.get("expires_at", 0) - time.time() >= REFRESH_MARGIN
            if secrets["access_token"] != stale and fresh:
                return secrets  # someone refreshed while we waited for the lock
            response = self._exchange(secrets["refresh_token"])
            stored = oauth_secrets(response)
            with db.transaction() as s:
                tenant = s.get(Tenant, self.tenant_id)
                assert tenant is not None
                tenant.crm_secrets = stored
            log.info("hubspot.token_refreshed tenant=%s", self.tenant_id)
            self._secrets = json.loads(stored)
            return self._secrets
        finally:
            lock.release()

    def _exchange(self, refresh_token: str) -> Any:
        client = HubSpot(host=self.settings.hubspot_api_base)
        try:
            return client.oauth.tokens_api.create(
                grant_type="refresh_token",
                refresh_token=refresh_token,
                client_id=self.settings.hubspot_client_id,
                client_secret=self.settings.hubspot_client_secret,
                _request_timeout=(5, 30),
            )
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 400 and "invalid_grant" in str(getattr(exc, "body", "")):
                reason = "HubSpot refused the refresh token (revoked or expired); install the app again"
                mark_needs_reinstall(self.tenant_id, reason)
                raise NeedsReinstall(reason) from None
            if status is not None and status < 500 and status != 429:
                raise PermanentError(f"HubSpot token refresh failed with HTTP {status}") from None
            raise RetryableError(f"HubSpot token refresh failed: {type(exc).__name__}") from None


def mark_needs_reinstall(tenant_id: int, reason: str) -> None:
    """Flag the tenant so every job fails fast with the reason until the app is installed again."""
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is not None:
            tenant.crm_status, tenant.crm_status_reason = "needs_reinstall", reason
    log.warning("hubspot.needs_reinstall tenant=%s", tenant_id)
