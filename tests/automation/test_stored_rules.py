"""Rules stored before a stricter check still leave the tenant with rules that can run: the newest valid
version is in force, and the one that no longer validates is logged, never raised in the worker."""

from __future__ import annotations

from typing import Any

from app.automation import rules, store
from app.core import caches, db
from app.core.models import RuleSet


def _store_unchecked(tenant_id: int, version: int, source: str) -> None:
    with db.transaction() as s:  # what an older release stored, bypassing today's validation
        s.add(RuleSet(tenant_id=tenant_id, version=version, source=source))


def test_a_stored_version_that_no_longer_validates_falls_back(tenant: Any, caplog: Any) -> None:
    good = rules.default_source()
    version = store.store_rules(tenant.id, good)
    bad = good.replace('quiet_hours: "08:00-21:00"', 'quiet_hours: "00:00-00:00"')  # refused since 0.2
    assert bad != good
    _store_unchecked(tenant.id, version + 1, bad)
    caches.clear_all()
    found = store.active_rules(tenant.id, fresh=True)
    assert found is not None and found[0] == version
    assert any("rules.invalid" in r.getMessage() for r in caplog.records)


def test_no_valid_version_means_no_rules(tenant: Any) -> None:
    _store_unchecked(
        tenant.id, 1, "rules: [{name: x, trigger: call.missed, actions: [{send_sms: {body: '{{ nope }}'}}]}]"
    )
    caches.clear_all()
    assert store.active_rules(tenant.id, fresh=True) is None
