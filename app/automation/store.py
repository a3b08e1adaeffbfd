"""The rules in force per tenant: stored versions (rule_sets) and a per-process cache of the parsed rules."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from cachetools import TTLCache
from sqlalchemy import select

from app.automation.rules import RulesError
from app.automation.rules import RuleSet as RulesFile
from app.automation.rules import load as load_rules
from app.core import bootstrap, caches, db, queue, tenants
from app.core.db import utcnow
from app.core.models import RuleSet

log = logging.getLogger(__name__)

CACHE_TTL = timedelta(seconds=30)
# tenant id -> (version, RuleSet) | None. An entry is checked on every use against the tenant's
# configuration token in Redis (app.core.tenants.config_version; store_rules replaces it), so every process
# sees newly loaded rules at its next webhook. An entry loaded while Redis did not answer has no token and
# lives CACHE_TTL.
_rules: TTLCache[int, Any] = TTLCache(maxsize=1000, ttl=CACHE_TTL.total_seconds())
_tokens: dict[int, Any] = {}  # tenant id -> the configuration token its cached rules were loaded under
_BACKSTOP = TTLCache[int, bool](maxsize=1000, ttl=600)  # tokened entries are re-read at least this often
# Should a process have answered webhooks from a stale "no rules" all the same (Redis was away), a catch-up
# job runs the automations, once every cache has expired, for what arrived in that window.
CATCH_UP_MARGIN = timedelta(seconds=5)
CATCH_UP_JOB = "jobs.automations.catch_up"


@caches.register
def clear_cache() -> None:
    """Forget the cached rules of every tenant."""
    _rules.clear()
    _tokens.clear()
    _BACKSTOP.clear()


def active_rules(tenant_id: int, *, fresh: bool = False) -> tuple[int, RulesFile] | None:
    """(version, rules) in force for the tenant, or None if it never loaded any."""
    if not fresh and tenant_id in _rules:
        if tenant_id not in _tokens:
            return _rules[tenant_id]  # type: ignore[no-any-return]
        current = tenants.config_version(tenant_id, max_age=tenants.TOKEN_MAX_AGE)
        if current is not tenants.UNKNOWN and current == _tokens[tenant_id] and tenant_id in _BACKSTOP:
            return _rules[tenant_id]  # type: ignore[no-any-return]
    token = tenants.config_version(tenant_id)  # read before the rules, so a load in between is seen
    found = _newest_valid(tenant_id)
    _rules[tenant_id] = found
    if token is tenants.UNKNOWN:
        _tokens.pop(tenant_id, None)
    else:
        _tokens[tenant_id] = token
        _BACKSTOP[tenant_id] = True
    return found


def _newest_valid(tenant_id: int) -> tuple[int, RulesFile] | None:
    """The newest stored version that still validates. A version stored before a stricter check (say,
    ambiguous quiet hours refused since 0.2) is skipped with an error in the log, so a tenant keeps the
    last rules that can run instead of its automations failing until an admin reloads them."""
    with db.transaction() as s:
        rows = s.execute(
            select(RuleSet.version, RuleSet.source)
            .where(RuleSet.tenant_id == tenant_id)
            .order_by(RuleSet.version.desc())
            .limit(20)
        ).all()
    for version, source in rows:
        try:
            return version, load_rules(source)
        except RulesError as exc:
            log.error("rules.invalid tenant=%s version=%s problems=%s", tenant_id, version, len(exc.problems))
    return None


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
    _tokens.pop(tenant_id, None)
    tenants.touch(tenant_id)  # every process's cached rules of this tenant are stale now
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
