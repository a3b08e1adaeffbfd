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

Anything else -- a concurrent first delivery of the same call, a lost compare-and-set, an event key that
collides -- returns None and the caller runs the locked transaction (ledger._record), which settles every
race. So the fast path never decides a race, it only skips the lock when there is none.
https://www.postgresql.org/docs/current/queries-with.html#QUERIES-WITH-MODIFYING
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy import JSON, Engine

from app.core.db import utcnow
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


def _param(name: str, value: Any) -> Any:
    return Json(value) if name in _JSON_COLUMNS and value is not None else value


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


@lru_cache(maxsize=64)
def _first_sql(columns: tuple[str, ...]) -> str:
    cols = ", ".join(columns)
    vals = ", ".join(f"%(i_{c})s" for c in columns)
    return (
        f"WITH ins AS (INSERT INTO interactions ({cols}) VALUES ({vals})"
        " ON CONFLICT (tenant_id, provider, channel, provider_id) DO NOTHING RETURNING id),"
        f" ev AS ({_event_select('ins')})"
        f" SELECT ins.id, {_guard('ins')}, cur.id, cur.facts, cur.version, cur.user_id,"
        " seen.id, seen.interaction_id, seen_i.version"
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
        " WHERE id = %(id)s AND version = %(version)s RETURNING id),"
        f" ev AS ({_event_select('u')})"
        f" SELECT u.id, {_guard('u')} FROM (SELECT 1) AS one LEFT JOIN u ON true LEFT JOIN ev ON true"
    )


_LINK_SQL = (
    f"INSERT INTO webhook_events ({', '.join(_EVENT_COLUMNS)}, interaction_id)"
    f" VALUES ({', '.join(f'%(e_{c})s' for c in _EVENT_COLUMNS)}, %(id)s)"
    " ON CONFLICT (tenant_id, provider, event_key) DO NOTHING RETURNING id"
)


def record(engine: Engine, tenant_id: int, event: Event, fold: Fold) -> Outcome:
    """Record the event in one or two autocommit statements: (interaction id, version, duplicate, changed),
    or None when a race or an error needs the locked transaction.

    `fold(old_facts, user_id, merged)` returns the interaction's new column values (facts included) once
    the event's facts fold into `old_facts` (ledger._apply).
    """
    raw = engine.raw_connection()
    try:
        conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
        conn.autocommit = True
        try:
            return _record(conn, tenant_id, event, fold)
        finally:
            if not conn.closed:
                conn.autocommit = False  # the pool hands it to ORM sessions next
    except (psycopg.IntegrityError, psycopg.DataError) as exc:
        # a collision the statements refused to half-apply (see _guard): the locked path decides
        log.warning("ledger.fast_path_refused error=%s %s", type(exc).__name__, exc)
        return None
    except psycopg.OperationalError:
        raw.invalidate()  # a dead connection; the locked path gets a fresh one (or reports the outage)
        return None
    finally:
        raw.close()


def _record(conn: psycopg.Connection[Any], tenant_id: int, event: Event, fold: Fold) -> Outcome:
    params: dict[str, Any] = {
        "tenant_id": tenant_id,
        "provider": event.provider,
        "channel": event.channel,
        "provider_id": event.provider_id,
        "e_tenant_id": tenant_id,
        "e_provider": event.provider,
        "e_stream": event.stream,
        "e_event_key": event.event_key,
        "e_payload": Json(event.raw),
        "e_received_at": utcnow(),
    }
    first = fold({}, None, None)
    first.update(
        tenant_id=tenant_id,
        provider=event.provider,
        channel=event.channel,
        provider_id=event.provider_id,
        version=1,
        created_at=first["updated_at"],
    )
    first = _with_defaults(first)
    columns = tuple(sorted(first))
    row = conn.execute(
        _first_sql(columns), {**params, **{f"i_{c}": _param(c, first[c]) for c in columns}}
    ).fetchone()
    assert row is not None
    new_id, _guarded, cur_id, cur_facts, cur_version, cur_user, seen_id, seen_interaction, seen_version = row
    if new_id is not None:
        return new_id, 1, False, True
    if seen_id is not None:
        return seen_interaction or 0, seen_version or 0, True, False
    if cur_id is None:
        return None  # a concurrent first delivery is inserting the interaction: the locked path waits for it
    params["id"], params["version"] = cur_id, cur_version
    merged = merge_facts(cur_facts or {}, event.facts)
    if merged == cur_facts and cur_version > 0:
        linked = conn.execute(_LINK_SQL, params).fetchone()
        if linked is None:
            return cur_id, cur_version, True, False
        return cur_id, cur_version, False, False
    values = fold(cur_facts or {}, cur_user, merged)
    columns = tuple(sorted(values))
    params.update({f"i_{c}": _param(c, values[c]) for c in columns})
    written = conn.execute(_update_sql(columns), params).fetchone()
    if written is None or written[0] is None:
        return None  # another delivery changed the interaction since we read it: fold again under the lock
    return cur_id, cur_version + 1, False, True
