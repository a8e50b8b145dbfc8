"""Access rows: who read which patients' records, written by the read's own statement.

A read of patient data runs as ``WITH shown AS (<the read>), recorded AS (INSERT INTO access_log
... SELECT ... FROM shown) SELECT * FROM shown`` in autocommit: one round trip, and the access row
is committed when the rows come back, before any response is sent. A read that returns no patient
record writes no row.
"""
from __future__ import annotations

import functools
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, select

from errors import ApiError
from models import database, sync
from models.tables import access_log, audit_log, patient
from models.tenancy import scoped

# Bind parameters of the access row, named apart from any column of the read.
_ORG, _USER, _IP, _AGENT, _REQUEST = "access__org_id", "access__user_id", "access__ip", "access__agent", "access__request"


@functools.cache
def _access_columns(patients, action: str, resource: str) -> tuple:
    """What an access row's SELECT returns, built once per source of patient ids."""
    ids = func.array_agg(sa.distinct(patients), type_=access_log.c.patient_ids.type)
    return ids, (sa.bindparam(_ORG, type_=access_log.c.org_id.type), sa.bindparam(_USER, type_=access_log.c.user_id.type),
                 sa.literal_column(f"'{action}'"), sa.literal_column(f"'{resource}'"), ids,
                 sa.bindparam(_IP, type_=sa.Text), sa.bindparam(_AGENT, type_=sa.Text),
                 sa.bindparam(_REQUEST, type_=sa.Text))


_ACCESS_ROW_COLUMNS = ["org_id", "user_id", "action", "resource", "patient_ids", "ip_address", "user_agent", "request_id"]


def _access_row(patients, action: str, resource: str, source):
    """INSERT INTO access_log ... SELECT ..., array_agg(<patients>) FROM <source>: the access row
    of the patients a read shows; none when it shows no row (array_agg of no rows is NULL)."""
    ids, columns = _access_columns(patients, action, resource)
    row = select(*columns).select_from(source).having(ids.isnot(None))
    return access_log.insert().from_select(_ACCESS_ROW_COLUMNS, row).cte("recorded")


def _without_flush_wait(statement):
    return statement.execution_options(**{database.ASYNCHRONOUS_COMMIT: True})


def recorded(read, patient_column: str, action: str, resource: str):
    """``read`` (a SELECT, built once and kept) with the access row of the patients in its
    ``patient_column``. Executed with ``params_for(caller)`` among its parameters."""
    shown = read.cte("shown")
    return with_access_row(select(shown), shown, patient_column, action, resource)


def with_access_row(statement, shown, patient_column: str, action: str, resource: str):
    """``statement``, which reads the CTE ``shown``, with the access row of the patients in
    ``shown``'s ``patient_column`` written by the same statement."""
    return _without_flush_wait(statement.add_cte(_access_row(shown.c[patient_column], action, resource, shown)))


def params_for(caller) -> dict:
    """Who read, and from where, for ``recorded``."""
    origin = caller.origin
    return {_ORG: caller.org_id, _USER: caller.user_id, _IP: origin.get("ip_address"),
            _AGENT: origin.get("user_agent"), _REQUEST: origin.get("request_id")}


_READ_COLUMNS = ("kind", "action", "resource", "resource_id", "user_id", "ip_address", "user_agent",
                 "request_id", "created_at")


# An entry's place in a sync: (created_at, source, seq), each table numbering its own rows. A
# cursor names it as the id a sync cursor carries: source in the high 64 bits, seq in the low.
_SOURCE = {"change": 0, "read": 1}


def _reads(org_id: str, patient_id: str):
    a = access_log.c
    return select(sa.literal("read").label("kind"), a.action, a.resource, sa.cast(sa.null(), audit_log.c.resource_id.type).label("resource_id"),
                  a.user_id, a.ip_address, a.user_agent, a.request_id, a.created_at, a.seq,
                  sa.literal(_SOURCE["read"]).label("source")) \
        .where(*scoped(access_log, org_id), a.patient_ids.contains(sa.cast([patient_id], access_log.c.patient_ids.type)))


def _changes(org_id: str, patient_id: str):
    a = audit_log.c
    return select(sa.literal("change"), a.action, a.resource, a.resource_id, a.user_id, a.ip_address,
                  a.user_agent, a.request_id, a.created_at, a.seq, sa.literal(_SOURCE["change"])) \
        .where(*scoped(audit_log, org_id), a.resource == "patient", a.resource_id == patient_id)


def patient_history(caller, patient_id: str, *, page: int, page_size: int, updated_since: str | None = None,
                    cursor: str | None = None) -> dict[str, Any]:
    """Who read or changed a patient's record, newest first; 404 only when the organization never
    had that patient (a deleted patient's history stays readable). With ``updated_since`` or
    ``cursor``, a sync page instead: the entries written since, oldest first."""
    if updated_since is None and cursor is None:
        return database.read(lambda conn: _history(conn, caller.org_id, patient_id, page, page_size))
    start = sync.position(updated_since, cursor)
    return database.recorded_read(lambda conn: _history_since(conn, caller.org_id, patient_id, page_size, start))


def _entries(conn, org_id: str, patient_id: str):
    known = conn.execute(select(patient.c.id).where(patient.c.id == patient_id,
                                                    *scoped(patient, org_id, deleted_too=True))).first()
    if known is None:
        raise ApiError("NOT_FOUND", "patient not found")
    return sa.union_all(_reads(org_id, patient_id), _changes(org_id, patient_id)).subquery()


def _history_since(conn, org_id: str, patient_id: str, page_size: int, start) -> dict[str, Any]:
    both = _entries(conn, org_id, patient_id)
    stamp, place = start
    number = uuid.UUID(place).int
    after = sa.tuple_(both.c.created_at, both.c.source, both.c.seq) > sa.tuple_(
        sa.literal(stamp, both.c.created_at.type), number >> 64, number & (2**64 - 1))
    where = [after, sync.before_horizon(both.c.created_at)]
    rows = conn.execute(
        select(*[both.c[name] for name in _READ_COLUMNS], both.c.source, both.c.seq).where(*where)
        .order_by(both.c.created_at, both.c.source, both.c.seq).limit(page_size)
    ).mappings().all()
    total = conn.execute(select(func.count()).select_from(both).where(*where)).scalar_one()
    if rows:
        last = rows[-1]
        start = (last["created_at"], str(uuid.UUID(int=(last["source"] << 64) | last["seq"])))
    return {"entries": [{name: row[name] for name in _READ_COLUMNS} for row in rows], "total": total,
            "total_estimated": False, "next_cursor": sync.encode_cursor(*start), "has_more": len(rows) == page_size}


def _history(conn, org_id: str, patient_id: str, page: int, page_size: int) -> dict[str, Any]:
    both = _entries(conn, org_id, patient_id)
    total = conn.execute(select(func.count()).select_from(both)).scalar_one()
    rows = conn.execute(
        select(*[both.c[name] for name in _READ_COLUMNS])
        .order_by(both.c.created_at.desc(), both.c.seq.desc())
        .limit(page_size).offset((page - 1) * page_size)
    ).mappings().all()
    return {"entries": [dict(row) for row in rows], "total": total, "total_estimated": False}
