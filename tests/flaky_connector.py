"""A built-in-CRM connector that fails on purpose, registered under crm="flaky" for resilience tests.

The tenant's settings["flaky"] says how: {"retryable": N} fails the first N writes of each activity with
a RetryableError; {"permanent": true} always raises PermanentError; {"crash_after_write": N} performs the
write and then raises N times, as if the worker died between the CRM's answer and our commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

from app.core.interactions import InteractionData
from app.core.tenants import settings_of
from connectors import CrmProvider
from connectors.base import ActivityWrite, CrmError, CrmRef, PermanentError, RetryableError, Throttled
from connectors.local import LocalConnector

ATTEMPTS: Counter[str] = Counter()
BATCHES: list[int] = []  # the size of every write_activities call


class FlakyConnector(LocalConnector):
    """LocalConnector with scripted failures."""

    name: ClassVar[str] = "flaky"

    def __init__(self, tenant) -> None:  # type: ignore[no-untyped-def]
        super().__init__(tenant)
        self.plan = settings_of(tenant).get("flaky", {})

    def write_activities(self, items: Sequence[ActivityWrite]) -> list[CrmRef | CrmError]:
        BATCHES.append(len(items))
        return super().write_activities(items)

    def log_interaction(self, contact: CrmRef, data: InteractionData, *, external_id: str) -> CrmRef:
        ATTEMPTS[external_id] += 1
        n = ATTEMPTS[external_id]
        if self.plan.get("permanent"):
            raise PermanentError("HTTP 400: property hs_call_direction is invalid")
        if n <= self.plan.get("throttled", 0):
            raise Throttled("daily API budget held", retry_after=self.plan.get("retry_after", 0))
        if n <= self.plan.get("retryable", 0):
            raise RetryableError("HTTP 503 from CRM", retry_after=0)
        ref = super().log_interaction(contact, data, external_id=external_id)
        if n <= self.plan.get("crash_after_write", 0):
            raise ConnectionResetError("connection reset after the CRM accepted the write")
        return ref


PROVIDER = CrmProvider(name="flaky", label="Flaky CRM", connector="tests.flaky_connector:FlakyConnector")
