"""The rules in force per tenant: stored versions (rule_sets) and a per-process cache of the parsed rules."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from cachetools import TTLCache
from sqlalchemy import select

from app.automation.rules import RuleSet as RulesFile
from app.automation.rules import load as load_rules
from app.core import bootstrap, caches, db, queue
from app.core.db import utcnow
from app.core.models import RuleSet

log = logging.getLogger(__name__)

CACHE_TTL = timedelta(seconds=30)
# tenant id -> (version, RuleSet) | None
_rules: TTLCache[int, Any] = TTLCache(maxsize=1000, ttl=CACHE_TTL.total_seconds())
# Other processes may answer webhooks from a cached "no rules" (or older rules) until CACHE_TTL after a load:
# a catch-up job runs the automations, once every cache has expired, for what arrived in that window.
CATCH_UP_MARGIN = timedelta(seconds=5)
CATCH_UP_JOB = "jobs.automations.catch_up"


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
    loaded_at = utcnow()
    status = queue.try_enqueue(
        bootstrap.current(),
        CATCH_UP_JOB,
        tenant_id,
        (loaded_at - CACHE_TTL - CATCH_UP_MARGIN).isoformat(),
        delay=CACHE_TTL + CATCH_UP_MARGIN,
        description=f"automations catch-up after rules v{latest + 1} of tenant {tenant_id}",
    )
    if status != "queued":
        log.warning("rules.catch_up_not_queued tenant=%s version=%s", tenant_id, latest + 1)
    return latest + 1
