"""Settings read once from the environment; every knob is documented in the README's table."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

# The project root: var/ (SQLite file, secret key, bundled Redis) lives beside app/.
ROOT = Path(__file__).resolve().parents[2]
VAR_DIR = Path(os.environ.get("SWITCHBOARD_VAR_DIR", ROOT / "var"))

MAX_BODY_BYTES = 1024 * 1024  # webhooks larger than 1 MiB are refused with 413


KEY_HOWTO = (
    "generate one with: python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and how to fix it (one line)."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    if not (raw.strip().isascii() and raw.strip().isdigit()):
        raise ConfigError(f"{name} must be a whole number, not {raw!r}")
    return int(raw)


def _intervals(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name)
    if not raw:
        return default
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise ConfigError(f"{name} must be comma-separated whole seconds, e.g. 5,30,120; not {raw!r}")
    return tuple(int(part) for part in parts)


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
    # The rep's dialer (app/web/dialer.py, logins.py): SMTP for one-time login links (unset: logged without
    # the token), their sender, extra hosts allowed to frame the page, and an Open CTI script override.
    smtp_url: str | None = None
    mail_from: str = "switchboard@localhost"
    dialer_frame_ancestors: tuple[str, ...] = ()
    salesforce_opencti_url: str | None = None
    queue_name: str = "switchboard"
    sweep_after_seconds: int = 60
    sweep_interval_seconds: int = 30
    job_retry_intervals: tuple[int, ...] = (5, 30, 120, 600, 1800)
    job_timeout_seconds: int = 120
    log_level: str = "INFO"
    # HubSpot: API base (point it at the emulator for demos and benchmarks) and the public app's OAuth client.
    twilio_api_base: str = "https://api.twilio.com"  # the Twilio REST API (or its emulator)
    hubspot_api_base: str = "https://api.hubapi.com"
    hubspot_authorize_url: str = "https://app.hubspot.com/oauth/authorize"
    hubspot_client_id: str | None = None
    hubspot_client_secret: str | None = None
    # Salesforce: the login host (login.salesforce.com, test.salesforce.com for sandboxes, a My Domain, or the
    # emulator), the External Client App's consumer key and secret, and the REST API version.
    salesforce_login_url: str = "https://login.salesforce.com"
    salesforce_client_id: str | None = None
    salesforce_client_secret: str | None = None
    salesforce_api_version: str = "62.0"
    # Email sending (app/channels/email.py): the providers' API hosts, or their emulators.
    sendgrid_api_base: str = "https://api.sendgrid.com"
    mailgun_api_base: str = "https://api.mailgun.net"
    # The rep's dialer: how long a rep's signed session lasts, and SWITCHBOARD_DEBUG (plain-http development:
    # the session cookie is then not marked Secure).
    rep_session_ttl_seconds: int = 8 * 3600
    debug: bool = False

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
            smtp_url=os.environ.get("SWITCHBOARD_SMTP_URL") or None,
            mail_from=os.environ.get("SWITCHBOARD_MAIL_FROM") or cls.mail_from,
            dialer_frame_ancestors=tuple(os.environ.get("DIALER_FRAME_ANCESTORS", "").split()),
            salesforce_opencti_url=os.environ.get("SALESFORCE_OPENCTI_URL") or None,
            queue_name=os.environ.get("SWITCHBOARD_QUEUE") or cls.queue_name,
            sweep_after_seconds=_int("SWEEP_AFTER_SECONDS", cls.sweep_after_seconds),
            sweep_interval_seconds=_int("SWEEP_INTERVAL_SECONDS", cls.sweep_interval_seconds),
            job_retry_intervals=_intervals("JOB_RETRY_INTERVALS", cls.job_retry_intervals),
            job_timeout_seconds=_int("JOB_TIMEOUT_SECONDS", cls.job_timeout_seconds),
            log_level=os.environ.get("LOG_LEVEL") or cls.log_level,
            twilio_api_base=(os.environ.get("TWILIO_API_BASE") or cls.twilio_api_base).rstrip("/"),
            hubspot_api_base=(os.environ.get("HUBSPOT_API_BASE") or cls.hubspot_api_base).rstrip("/"),
            hubspot_authorize_url=os.environ.get("HUBSPOT_AUTHORIZE_URL") or cls.hubspot_authorize_url,
            hubspot_client_id=os.environ.get("HUBSPOT_CLIENT_ID") or None,
            hubspot_client_secret=os.environ.get("HUBSPOT_CLIENT_SECRET") or None,
            salesforce_login_url=(os.environ.get("SALESFORCE_LOGIN_URL") or cls.salesforce_login_url).rstrip(
                "/"
            ),
            salesforce_client_id=os.environ.get("SALESFORCE_CLIENT_ID") or None,
            salesforce_client_secret=os.environ.get("SALESFORCE_CLIENT_SECRET") or None,
            sendgrid_api_base=(os.environ.get("SENDGRID_API_BASE") or cls.sendgrid_api_base).rstrip("/"),
            mailgun_api_base=(os.environ.get("MAILGUN_API_BASE") or cls.mailgun_api_base).rstrip("/"),
            salesforce_api_version=(os.environ.get("SALESFORCE_API_VERSION") or cls.salesforce_api_version)
            .lstrip("v")
            .strip(),
            rep_session_ttl_seconds=_int("REP_SESSION_TTL_SECONDS", cls.rep_session_ttl_seconds),
            debug=(os.environ.get("SWITCHBOARD_DEBUG") or "").strip().lower() in ("1", "true", "yes", "on"),
        )

    def validate(self, *, need_secret_key: bool = True) -> Settings:
        """Check the settings every process needs; ConfigError names the variable and how to fix it."""
        check_database_url(self.database_url)
        check_redis_url(self.redis_url)
        if need_secret_key and not self.secret_keys:
            raise ConfigError(f"SWITCHBOARD_SECRET_KEY is not set (it encrypts secrets at rest); {KEY_HOWTO}")
        for key in self.secret_keys:
            check_secret_key(key)
        for host in self.redis_sentinels:
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ConfigError(f"REDIS_SENTINELS takes host:port,host:port; {host!r} is not host:port")
        return self

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


def check_database_url(url: str) -> None:
    """DATABASE_URL must be a SQLite or PostgreSQL SQLAlchemy URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    example = "e.g. postgresql://user:password@host:5432/switchboard or sqlite:///var/switchboard.db"
    try:
        backend = make_url(database_url_for_sqlalchemy(url)).get_backend_name()
    except (ArgumentError, ValueError):
        raise ConfigError(f"DATABASE_URL is not a database URL ({example})") from None
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"DATABASE_URL must be SQLite or PostgreSQL, not {backend} ({example})")


def check_redis_url(url: str) -> None:
    """REDIS_URL must be a redis://, rediss:// or unix:// URL."""
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError:
        raise ConfigError(
            "REDIS_URL is not a Redis URL (e.g. redis://127.0.0.1:6379/0, rediss://:password@host:6380/0)"
        ) from None


def check_secret_key(key: str) -> None:
    """Each SWITCHBOARD_SECRET_KEY entry must be a Fernet key (32 url-safe base64-encoded bytes)."""
    from cryptography.fernet import Fernet

    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        raise ConfigError(f"SWITCHBOARD_SECRET_KEY is not a Fernet key; {KEY_HOWTO}") from None


def database_url_for_sqlalchemy(url: str) -> str:
    """Map plain postgres URLs to the psycopg 3 driver SQLAlchemy should use."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url
