"""Secrets at rest: Fernet encryption with key rotation, and hashing for API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

_fernet: MultiFernet | None = None


class SecretKeyMissing(RuntimeError):
    """Raised when a secret must be encrypted or decrypted but no key is configured."""


def configure(keys: tuple[str, ...]) -> None:
    """Install the Fernet keys; the first one encrypts, all of them decrypt (rotation)."""
    global _fernet
    _fernet = MultiFernet([Fernet(k.encode()) for k in keys]) if keys else None


def new_key() -> str:
    """Return a fresh Fernet key for SWITCHBOARD_SECRET_KEY."""
    return Fernet.generate_key().decode()


def _require() -> MultiFernet:
    if _fernet is None:
        raise SecretKeyMissing("SWITCHBOARD_SECRET_KEY is not set; cannot encrypt or decrypt secrets")
    return _fernet


def encrypt(plaintext: str) -> str:
    """Encrypt a secret for storage."""
    return _require().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt a stored secret; raises SecretKeyMissing if no configured key can read it."""
    try:
        return _require().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretKeyMissing("stored secret cannot be decrypted with the configured keys") from exc


def hash_api_key(key: str) -> str:
    """Hash an API key for storage; keys are 256-bit random, so a plain SHA-256 is enough."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """Return (prefix, full key) for a new API key; the prefix is stored in clear to find the row."""
    prefix = secrets.token_hex(6)
    return prefix, f"sb_{prefix}_{secrets.token_urlsafe(32)}"


def api_key_prefix(key: str) -> str | None:
    """Extract the lookup prefix from a presented key, or None if it is not shaped like ours."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "sb" or len(parts[1]) != 12:
        return None
    return parts[1]


def same(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
