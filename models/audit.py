"""Audit rows, written in the caller's transaction (or in the change's own statement) so a change
and its record commit together."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy import Numeric, func
from sqlalchemy.dialects.postgresql import TIMESTAMP

from models.tables import audit_log

# Never copied into an audit image, whatever the resource.
SECRET_FIELDS = frozenset({"password", "password_hash", "refresh_token", "refresh_token_hash"})
# Values are passed as parameters: the statement is built (and its cache key computed) once.
_INSERT = audit_log.insert()


def scrub(image: Mapping[str, Any] | None) -> dict | None:
    if image is None:
        return None
    return {key: value for key, value in image.items() if key not in SECRET_FIELDS}


def image_in_sql(columns: Iterable[sa.ColumnElement]) -> sa.ColumnElement:
    """A row's audit image built by PostgreSQL, for a write whose audit row is part of its own
    statement (``crud._insert_audited``).

    It must be the text ``database._json_dumps`` gives the same row, so that an image reads the
    same whichever path wrote it: instants as Python's ``isoformat()`` (six fractional digits, none
    when they are all zero, "+00:00") and money as a float. A test compares the two paths for
    every column type the tables use.
    """
    pairs = []
    for column in columns:
        if column.name in SECRET_FIELDS:
            continue
        value = column
        if isinstance(column.type, TIMESTAMP):
            # to_jsonb would drop trailing zeros (".12" where Python writes ".120000").
            text = func.to_char(func.timezone(_sql("'UTC'"), column), _sql("""'YYYY-MM-DD"T"HH24:MI:SS.US'"""))
            value = func.replace(text, _sql("'.000000'"), _sql("''")).concat(_sql("'+00:00'"))
        elif isinstance(column.type, Numeric) and not isinstance(column.type, sa.Float):
            # Python writes money as a float: 12.5 for 12.50, where to_jsonb keeps the scale, and
            # -3.0 for -3.00, where PostgreSQL's float text is "-3". The columns' range (below
            # 1e15) keeps both out of exponent notation.
            text = sa.cast(sa.cast(column, sa.Float(53)), sa.Text)
            value = sa.cast(sa.case((column == func.trunc(column), text.concat(_sql("'.0'"))), else_=text),
                            audit_log.c.after.type)
        pairs += [_sql(f"'{column.name}'"), value]
    return func.jsonb_build_object(*pairs, type_=audit_log.c.after.type)


# Bind parameters of an audit row written by another statement, named apart from any column.
_USER, _IP, _AGENT, _REQUEST = "audit__user_id", "audit__ip", "audit__agent", "audit__request"


def insert_from(rows, action: str, resource: str):
    """INSERT INTO audit_log ... SELECT ... FROM ``rows`` (the RETURNING of a data-modifying
    CTE): one audit row per row written, with its image built by ``image_in_sql``. Executed with
    ``params_for(caller)`` among the statement's parameters."""
    return audit_log.insert().from_select(
        ["org_id", "user_id", "action", "resource", "resource_id", "after", "ip_address", "user_agent",
         "request_id"],
        sa.select(rows.c.org_id, sa.bindparam(_USER, type_=audit_log.c.user_id.type),
                  _sql(f"'{action}'"), _sql(f"'{resource}'"), rows.c.id, image_in_sql(rows.c),
                  sa.bindparam(_IP, type_=sa.Text), sa.bindparam(_AGENT, type_=sa.Text),
                  sa.bindparam(_REQUEST, type_=sa.Text)),
    )


def params_for(caller) -> dict:
    """Who wrote, and from where, for ``insert_from``."""
    origin = caller.origin
    return {_USER: caller.user_id, _IP: origin.get("ip_address"), _AGENT: origin.get("user_agent"),
            _REQUEST: origin.get("request_id")}


def _sql(constant: str) -> sa.ColumnElement:
    # Constants written into the statement: its text, and SQLAlchemy's cache key, never change.
    return sa.literal_column(constant)


def record(conn, *, org_id: str, user_id: str | None, action: str, resource: str,
           resource_id: str | None = None, before=None, after=None, origin=None) -> None:
    """Append one audit row on ``conn``; if it fails, the surrounding transaction fails with it."""
    origin = origin or {}
    conn.execute(_INSERT, {
        "org_id": org_id,
        "user_id": user_id,
        "action": action,
        "resource": resource,
        "resource_id": resource_id,
        "before": scrub(before),
        "after": scrub(after),
        "ip_address": origin.get("ip_address"),
        "user_agent": origin.get("user_agent"),
        "request_id": origin.get("request_id"),
    })


def record_for(conn, caller, action: str, resource: str, resource_id=None, before=None, after=None):
    """``record`` for an authenticated caller."""
    record(
        conn,
        org_id=caller.org_id,
        user_id=caller.user_id,
        action=action,
        resource=resource,
        resource_id=resource_id,
        before=before,
        after=after,
        origin=caller.origin,
    )
