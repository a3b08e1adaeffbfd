"""The rules in force per tenant: stored versions (rule_sets) and a per-process cache of the parsed rules."""

from __future__ import annotations

from typing import Any

from cachetools import TTLCache
from sqlalchemy import select

from app.automation.rules import RuleSet as RulesFile
from app.automation.rules import load as load_rules
from app.core import caches, db
from app.core.models import RuleSet

_rules: TTLCache[int, Any] = TTLCache(maxsize=1000, ttl=30)  # tenant id -> (version, RuleSet) | None


@caches.register
def clear_cache() -> None:
    """Forget the cached rules of every tenant."""
    _rules.clear()


def active_rules(tenant_id: int, *, fresh: bool = False) -> tuple[int, RulesFile] | None:
    """(version, rules) in force for the tenant, or None if it never loaded any."""
    if not fresh and tenant_id in _rules:
        return _rules[tenant_id]  # type: ignore[no-any-return]
    with db.transaction() as s:
        row = s.scalar(
            select(RuleSet).where(RuleSet.tenant_id == tenant_id).order_by(RuleSet.version.desc()).limit(1)
        )
        found = (row.version, load_rules(row.source)) if row is not None else None
    _rules[tenant_id] = found
    return found


def store_rules(tenant_id: int, source: str) -> int:
    """Validate and store a new version of the tenant's rules; returns the version (RulesError if invalid)."""
    load_rules(source)
    with db.transaction() as s:
        latest = (
            s.scalar(
                select(RuleSet.version)
                .where(RuleSet.tenant_id == tenant_id)
                .order_by(RuleSet.version.desc())
                .limit(1)
            )
            or 0
        )
        s.add(RuleSet(tenant_id=tenant_id, version=latest + 1, source=source))
    _rules.pop(tenant_id, None)
    return latest + 1
