"""Audit rows, written in the caller's transaction so a change and its record commit together."""
from __future__ import annotations

from typing import Any, Mapping

from models.tables import audit_log

# Never copied into an audit image, whatever the resource.
SECRET_FIELDS = frozenset({"password", "password_hash", "refresh_token", "refresh_token_hash"})
# Values are passed as parameters: the statement is built (and its cache key computed) once.
_INSERT = audit_log.insert()


def scrub(image: Mapping[str, Any] | None) -> dict | None:
    if image is None:
        return None
    return {key: value for key, value in image.items() if key not in SECRET_FIELDS}


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
