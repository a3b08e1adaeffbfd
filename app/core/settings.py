"""Settings read once from the environment; every knob is documented in the README's table."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

# The project root: var/ (SQLite file, secret key, bundled Redis) lives beside app/.
ROOT = Path(__file__).resolve().parents[2]
VAR_DIR = Path(os.environ.get("SWITCHBOARD_VAR_DIR", ROOT / "var"))

MAX_BODY_BYTES = 1024 * 1024  # webhooks larger than 1 MiB are refused with 413


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _intervals(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name)
    if not raw:
        return default
    return tuple(int(part) for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the web process, the worker and the CLI need to know about their surroundings."""

    database_url: str = f"sqlite:///{VAR_DIR / 'switchboard.db'}"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Sentinel for failover (RQ does not support Redis Cluster): "host:port,host:port" + master name.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = "mymaster"
    secret_keys: tuple[str, ...] = ()
    public_base_url: str | None = None
    trust_proxy_hops: int = 0
    queue_name: str = "switchboard"
    sweep_after_seconds: int = 60
    job_retry_intervals: tuple[int, ...] = (5, 30, 120, 600, 1800)
    job_timeout_seconds: int = 120
    log_level: str = "INFO"
    # HubSpot: API base (point it at the emulator for demos and benchmarks) and the public app's OAuth client.
    twilio_api_base: str = "https://api.twilio.com"  # the Twilio REST API (or its emulator)
    hubspot_api_base: str = "https://api.hubapi.com"
    hubspot_authorize_url: str = "https://app.hubspot.com/oauth/authorize"
    hubspot_client_id: str | None = None
    hubspot_client_secret: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from environment variables, falling back to the embedded defaults."""
        raw_keys = os.environ.get("SWITCHBOARD_SECRET_KEY") or _embedded_key()
        keys = tuple(k.strip() for k in raw_keys.split(",") if k.strip())
        return cls(
            database_url=os.environ.get("DATABASE_URL") or cls.database_url,
            redis_url=os.environ.get("REDIS_URL") or cls.redis_url,
            secret_keys=keys,
            redis_sentinels=tuple(
                x.strip() for x in os.environ.get("REDIS_SENTINELS", "").split(",") if x.strip()
            ),
            redis_sentinel_master=os.environ.get("REDIS_SENTINEL_MASTER") or cls.redis_sentinel_master,
            public_base_url=(os.environ.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            trust_proxy_hops=_int("TRUST_PROXY_HOPS", 0),
            queue_name=os.environ.get("SWITCHBOARD_QUEUE") or cls.queue_name,
            sweep_after_seconds=_int("SWEEP_AFTER_SECONDS", cls.sweep_after_seconds),
            job_retry_intervals=_intervals("JOB_RETRY_INTERVALS", cls.job_retry_intervals),
            job_timeout_seconds=_int("JOB_TIMEOUT_SECONDS", cls.job_timeout_seconds),
            log_level=os.environ.get("LOG_LEVEL") or cls.log_level,
            twilio_api_base=(os.environ.get("TWILIO_API_BASE") or cls.twilio_api_base).rstrip("/"),
            hubspot_api_base=(os.environ.get("HUBSPOT_API_BASE") or cls.hubspot_api_base).rstrip("/"),
            hubspot_authorize_url=os.environ.get("HUBSPOT_AUTHORIZE_URL") or cls.hubspot_authorize_url,
            hubspot_client_id=os.environ.get("HUBSPOT_CLIENT_ID") or None,
            hubspot_client_secret=os.environ.get("HUBSPOT_CLIENT_SECRET") or None,
        )

    def sentinel_hosts(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs."""
        return [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in self.redis_sentinels]

    def with_(self, **changes: object) -> Settings:
        """Return a copy with some fields changed (handy in tests and the dev runner)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _embedded_key() -> str:
    """The key `switchboard run` generated under var/ for the embedded default, if there is one."""
    path = VAR_DIR / "secret.key"
    return path.read_text().strip() if path.exists() else ""


def database_url_for_sqlalchemy(url: str) -> str:
    """Map plain postgres URLs to the psycopg 3 driver SQLAlchemy should use."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url
