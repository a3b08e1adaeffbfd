"""The PostgreSQL hot path of `ledger.record`: autocommit statements on the driver connection, no BEGIN.

The webhook's durable write used to cost four round trips (BEGIN, two statements, COMMIT) and about a
millisecond of SQLAlchemy statement building. Here each step is ONE statement in autocommit mode (a single
statement is its own transaction, so its parts commit together or not at all), written once per column set
and run through psycopg, which prepares it server-side after a few uses (`prepare_threshold`):

- a first event of an interaction (every text, the first callback of a call): one statement inserts the
  interaction (folded from nothing) and the event pointing at it; when the interaction exists it inserts
  nothing and returns the row as it stands, and whether the event key was seen already (a duplicate);
- a later event: the facts fold in Python (app.core.interactions.merge_facts/derive, the one place that
  knows how) and one statement writes the interaction only if its version is still the one read
  (compare-and-set) together with the event; an event that changes nothing is inserted alone.

A later event of an interaction this process wrote last (`_known`: its id, row version and facts, by key)
costs ONE statement: the facts fold from that copy and the write applies only if the row is still that
row version (its xmin: any write since, ours, another process's or the worker's, changes it), and the
same statement returns the row as it stands when it is not, so a stale copy costs no extra round trip
(issue 9: a call's callbacks fold in one statement each instead of two when the worker that took the
last one takes the next).

A lost round (a concurrent first delivery of the same call inserted it first, or another delivery
changed it between our read and our write) reads and folds again, up to ATTEMPTS rounds; after that, or
when an event key collides, it returns None and the caller runs the locked transaction (ledger._record),
which settles every race. So the fast path never half-applies an event, and contention ends under the lock.
https://www.postgresql.org/docs/current/queries-with.html#QUERIES-WITH-MODIFYING
https://www.psycopg.org/psycopg3/docs/advanced/prepare.html (behind PgBouncer in transaction mode: >= 1.21
with max_prepared_statements, or prepare_threshold=None)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import psycopg
from cachetools import LRUCache
from psycopg.types.json import Json
from sqlalchemy import JSON, Engine

from app.core.db import UTCDateTime, utcnow
from app.core.interactions import Event, merge_facts
from app.core.models import Interaction, WebhookEvent

log = logging.getLogger(__name__)

Outcome = tuple[int, int, bool, bool] | None  # interaction id, version, duplicate, changed; None: locked path
# (old facts, the interaction's user id, the merged facts if known) -> the interaction's new column values
Fold = Callable[[dict[str, Any], int | None, dict[str, Any] | None], dict[str, Any]]

_JSON_COLUMNS = frozenset(
    c.name
    for t in (Interaction.__table__, WebhookEvent.__table__)
    for c in t.columns
    if isinstance(c.type, JSON)
)
_EVENT_COLUMNS = ("tenant_id", "provider", "stream", "event_key", "payload", "received_at")


def _column_defaults() -> dict[str, Any]:
    # SQLAlchemy applies the models' Python-side defaults (version=1, attempts=0, ...) on its own inserts;
    # this path writes its own SQL, so it applies them here.
    out = {}
    for column in Interaction.__table__.columns:
        if column.default is not None:  # a scalar, or a callable SQLAlchemy wrapped to take a context
            out[column.name] = column.default.arg  # type: ignore[attr-defined]
    return out


_DEFAULTS = _column_defaults()


def _with_defaults(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, default in _DEFAULTS.items():
        if name not in values:
            out[name] = default(None) if callable(default) else default
    out.update(values)
    return out


_TIMES = UTCDateTime()
_TIME_COLUMNS = frozenset(
    c.name
    for t in (Interaction.__table__, WebhookEvent.__table__)
    for c in t.columns
    if isinstance(c.type, UTCDateTime)
)


def _param(name: str, value: Any) -> Any:
    """A value as the column's SQLAlchemy type would bind it: JSON wrapped, times checked aware and UTC."""
    if value is None:
        return None
    if name in _JSON_COLUMNS:
        return Json(value)
    if name in _TIME_COLUMNS:
        return _TIMES.process_bind_param(value, None)
    return value


def _event_select(source: str) -> str:
    """INSERT of the event row, pointing at `<source>.id`, inserting nothing when `source` is empty."""
    cols = ", ".join(_EVENT_COLUMNS)
    vals = ", ".join(f"%(e_{c})s" for c in _EVENT_COLUMNS)
    return (
        f"INSERT INTO webhook_events ({cols}, interaction_id) SELECT {vals}, {source}.id FROM {source}"
        " ON CONFLICT (tenant_id, provider, event_key) DO NOTHING RETURNING id"
    )


# A statement's parts cannot be rolled back one by one: should the interaction be written but the event
# collide (a key recorded for an interaction since deleted), dividing by zero fails the whole statement,
# so nothing commits and the locked path decides.
def _guard(written: str) -> str:
    return f"CASE WHEN {written}.id IS NOT NULL AND ev.id IS NULL THEN {written}.id / 0 END"


# The SQL below names columns from the models' own value dicts (ledger._apply), never from a request.
@lru_cache(maxsize=64)
def _first_sql(columns: tuple[str, ...]) -> str:
    cols = ", ".join(columns)
    vals = ", ".join(f"%(i_{c})s" for c in columns)
    return (
        f"WITH ins AS (INSERT INTO interactions ({cols}) VALUES ({vals})"
        " ON CONFLICT (tenant_id, provider, channel, provider_id) DO NOTHING RETURNING id, xmin),"
        f" ev AS ({_event_select('ins')})"
        f" SELECT ins.id, {_guard('ins')}, cur.id, cur.facts, cur.version, cur.user_id,"
        " seen.id, seen.interaction_id, seen_i.version, ins.xmin::text, cur.xmin::text"
        " FROM (SELECT 1) AS one LEFT JOIN ins ON true LEFT JOIN ev ON true"
        " LEFT JOIN interactions AS cur ON cur.tenant_id = %(tenant_id)s AND cur.provider = %(provider)s"
        " AND cur.channel = %(channel)s AND cur.provider_id = %(provider_id)s"
        " LEFT JOIN webhook_events AS seen ON seen.tenant_id = %(tenant_id)s"
        " AND seen.provider = %(provider)s AND seen.event_key = %(e_event_key)s"
        " LEFT JOIN interactions AS seen_i ON seen_i.id = seen.interaction_id"
    )


@lru_cache(maxsize=64)
def _update_sql(columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = %(i_{c})s" for c in columns)
    return (
        f"WITH u AS (UPDATE interactions SET {sets}, version = %(version)s + 1"
        " WHERE id = %(id)s AND version = %(version)s RETURNING id, xmin),"
        f" ev AS ({_event_select('u')})"
        f" SELECT u.id, {_guard('u')}, u.xmin::text FROM (SELECT 1) AS one LEFT JOIN u ON true"
        " LEFT JOIN ev ON true"
    )


@lru_cache(maxsize=64)
def _known_sql(columns: tuple[str, ...]) -> str:
    """The write of a fold from a `_known` copy: only onto that very row version (xmin) and only for an event
    key not recorded yet; with the row as it stands and the recorded key, for when it does not apply."""
    sets = ", ".join(f"{c} = %(i_{c})s" for c in columns)
    return (
        "WITH seen AS (SELECT id, interaction_id FROM webhook_events WHERE tenant_id = %(e_tenant_id)s"
        " AND provider = %(e_provider)s AND event_key = %(e_event_key)s),"
        f" u AS (UPDATE interactions SET {sets}, version = %(version)s + 1"
        " WHERE id = %(id)s AND xmin = %(xmin)s::xid AND version = %(version)s"
        " AND NOT EXISTS (SELECT 1 FROM seen) RETURNING id, xmin),"
        f" ev AS ({_event_select('u')})"
        f" SELECT u.id, {_guard('u')}, cur.id, cur.facts, cur.version, cur.user_id,"
        " seen.id, seen.interaction_id, seen_i.version, u.xmin::text, cur.xmin::text"
        " FROM (SELECT 1) AS one LEFT JOIN u ON true LEFT JOIN ev ON true"
        " LEFT JOIN interactions AS cur ON cur.id = %(id)s LEFT JOIN seen ON true"
        " LEFT JOIN interactions AS seen_i ON seen_i.id = seen.interaction_id"
    )


# (tenant, provider, channel, provider id) -> (id, version, xmin, facts, user id) of the interaction as this
# process last wrote it. Only a hint: a write from it applies to that row version or not at all. Bounded
# (calls whose callbacks are still coming); facts are never mutated in place (merge_facts copies).
Known = tuple[int, int, str, dict[str, Any], int | None]
KNOWN_MAX = 4096
_known: LRUCache[tuple[int, str, str, str], Known] = LRUCache(maxsize=KNOWN_MAX)
_known_lock = threading.Lock()  # gthread workers share the cache


def _remember(key: tuple[int, str, str, str], known: Known | None) -> None:
    with _known_lock:
        if known is None:
            _known.pop(key, None)
        else:
            _known[key] = known


_LINK_SQL = (
    f"INSERT INTO webhook_events ({', '.join(_EVENT_COLUMNS)}, interaction_id)"
    f" VALUES ({', '.join(f'%(e_{c})s' for c in _EVENT_COLUMNS)}, %(id)s)"
    " ON CONFLICT (tenant_id, provider, event_key) DO NOTHING RETURNING id"
)

# An event that adds nothing to the remembered copy adds nothing to the row either (facts only grow, and
# merging is order-free, so the row is that copy merged with others): it is only linked, with the row's
# version. The interaction gone, the insert fails its foreign key and the locked path decides.
_LINK_KNOWN_SQL = (
    f"WITH ev AS ({_LINK_SQL}) SELECT ev.id, cur.version FROM (SELECT 1) AS one LEFT JOIN ev ON true"
    " LEFT JOIN interactions AS cur ON cur.id = %(id)s"
)


def record(engine: Engine, tenant_id: int, event: Event, fold: Fold) -> Outcome:
    """Record the event in one or two autocommit statements: (interaction id, version, duplicate, changed),
    or None when a race or an error needs the locked transaction.

    `fold(old_facts, user_id, merged)` returns the interaction's new column values (facts included) once
    the event's facts fold into `old_facts` (ledger._apply).
    """
    raw = engine.raw_connection()
    conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
    try:
        conn.autocommit = True
        return _record(conn, tenant_id, event, fold)
    except (psycopg.IntegrityError, psycopg.DataError) as exc:
        # a collision the statements refused to half-apply (see _guard): the locked path decides
        log.debug("ledger.fast_path_refused error=%s", type(exc).__name__)
        return None
    except psycopg.OperationalError as exc:
        # A dead connection (a database restart): the locked path gets a fresh one, or reports the outage.
        log.info("ledger.fast_path_disconnected error=%s", type(exc).__name__)
        return None
    finally:
        try:
            conn.autocommit = False  # the pool hands it to ORM sessions next
        except psycopg.Error:
            raw.invalidate()  # broken: the pool must not hand it out again
        raw.close()


ATTEMPTS = 3  # optimistic rounds before the locked path; each lost one means another delivery committed


Row = tuple[int, dict[str, Any] | None, int, int | None, str]  # id, facts, version, user id, xmin


def _record(conn: psycopg.Connection[Any], tenant_id: int, event: Event, fold: Fold) -> Outcome:
    key = {
        "tenant_id": tenant_id,
        "provider": event.provider,
        "channel": event.channel,
        "provider_id": event.provider_id,
    }
    ev = {
        "e_tenant_id": tenant_id,
        "e_provider": event.provider,
        "e_stream": event.stream,
        "e_event_key": event.event_key,
        "e_payload": Json(event.raw),
        "e_received_at": utcnow(),
    }
    known_key = (tenant_id, event.provider, event.channel, event.provider_id)
    with _known_lock:
        known = _known.get(known_key)
    rounds = ATTEMPTS
    current: Row | None = None  # the row as a statement of this call returned it
    if known is not None and merge_facts(known[3], event.facts) == known[3]:
        linked, version = conn.execute(_LINK_KNOWN_SQL, {**ev, "id": known[0]}).fetchone() or (None, None)
        if version is not None:
            return known[0], version, linked is None, False
        # no such row (a duplicate of an event of a deleted interaction): the first statement decides
    elif known is not None:
        outcome, current = _from_known(conn, ev, known, known_key, event, fold)
        if outcome is not None:
            return outcome
        rounds -= 1  # that was an optimistic round too, lost
    first_sql, first_params, first = "", {}, {}
    for _attempt in range(rounds):
        if current is None:
            if not first_sql:
                first = fold({}, None, None)
                first.update(key, version=1, created_at=first["updated_at"])
                first = _with_defaults(first)
                columns = tuple(sorted(first))
                first_sql = _first_sql(columns)
                first_params = {**key, **ev, **{f"i_{c}": _param(c, first[c]) for c in columns}}
            row = conn.execute(first_sql, first_params).fetchone()
            assert row is not None
            new_id, _g, cur_id, cur_facts, cur_version, cur_user, seen_id, seen_for, seen_version = row[:9]
            new_xmin, cur_xmin = row[9], row[10]
            if new_id is not None:
                _remember(known_key, (new_id, 1, new_xmin, first["facts"], first.get("user_id")))
                return new_id, 1, False, True
            if seen_id is not None:
                return seen_for or 0, seen_version or 0, True, False
            if cur_id is None:
                # A concurrent first delivery was inserting the interaction (ON CONFLICT waited for its
                # commit, which this statement's snapshot predates): the next round sees it.
                continue
            current = (cur_id, cur_facts, cur_version, cur_user, cur_xmin)
        cur_id, cur_facts, cur_version, cur_user, _xmin = current
        current = None
        known_row = {**ev, "id": cur_id, "version": cur_version}
        merged = merge_facts(cur_facts or {}, event.facts)
        if merged == cur_facts and cur_version > 0:
            # Nothing new (a late "ringing" after "completed"): facts once folded stay folded, so the event
            # only needs linking, whatever version the interaction is at by now.
            linked = conn.execute(_LINK_SQL, known_row).fetchone()
            return cur_id, cur_version, linked is None, False
        values = fold(cur_facts or {}, cur_user, merged)
        columns = tuple(sorted(values))
        known_row.update({f"i_{c}": _param(c, values[c]) for c in columns})
        written = conn.execute(_update_sql(columns), known_row).fetchone()
        if written is not None and written[0] is not None:
            user = values.get("user_id", cur_user)
            _remember(known_key, (cur_id, cur_version + 1, written[2], values["facts"], user))
            return cur_id, cur_version + 1, False, True
        # Another delivery changed the interaction since we read it: read and fold again.
    return None


def _from_known(
    conn: psycopg.Connection[Any],
    ev: dict[str, Any],
    known: Known,
    known_key: tuple[int, str, str, str],
    event: Event,
    fold: Fold,
) -> tuple[Outcome, Row | None]:
    """Fold onto the remembered copy in one statement: (the outcome, None) when it applied or the event is
    a duplicate, else (None, the row as it stands, or None when there is none). An event that adds nothing
    to the copy is not brought here (_LINK_KNOWN_SQL)."""
    known_id, known_version, known_xmin, known_facts, known_user = known
    values = fold(known_facts, known_user, merge_facts(known_facts, event.facts))
    columns = tuple(sorted(values))
    params = {**ev, "id": known_id, "version": known_version, "xmin": known_xmin}
    params.update({f"i_{c}": _param(c, values[c]) for c in columns})
    row = conn.execute(_known_sql(columns), params).fetchone()
    assert row is not None
    written, _g, cur_id, cur_facts, cur_version, cur_user, seen_id, seen_for, seen_version = row[:9]
    if written is not None:
        user = values.get("user_id", known_user)
        _remember(known_key, (known_id, known_version + 1, row[9], values["facts"], user))
        return (known_id, known_version + 1, False, True), None
    if seen_id is not None:
        return (seen_for or 0, seen_version or 0, True, False), None
    _remember(known_key, None)  # stale: the row as it stands is folded next
    if cur_id is None:
        return None, None  # gone (deleted): the first statement decides
    return None, (cur_id, cur_facts, cur_version, cur_user, row[10])
