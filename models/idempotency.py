"""Idempotency keys (IETF httpapi draft): a retried create replays its first response.

The key row is inserted in the transaction that creates the resource. A concurrent request with
the same key blocks on the unique key until the first commits, then finds the stored response and
replays it (or, if the first rolled back, goes ahead itself). Keys belong to one user and expire.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

import config
from errors import ApiError
from models.tables import idempotency_key


@dataclass
class IdempotentRequest:
    """A create carrying an Idempotency-Key; ``replayed`` tells the handler what happened."""

    key: str
    request_hash: str
    replayed: bool = False

    @classmethod
    def of(cls, key: str | None, method: str, path: str, body) -> "IdempotentRequest | None":
        if not key:
            return None
        canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"), default=str)
        return cls(key=key, request_hash=hashlib.sha256(canonical.encode()).hexdigest())


def claim(conn, caller, request: IdempotentRequest) -> dict | None:
    """Reserve the key for this transaction, or return the stored response body to replay."""
    table = idempotency_key
    ttl = dt.timedelta(hours=config.current().idempotency_ttl_hours)
    # An expired key is forgotten, so the same key may start a new create.
    conn.execute(table.delete().where(table.c.user_id == caller.user_id, table.c.key == request.key,
                                      table.c.expires_at < func.now()))
    inserted = conn.execute(
        insert(table).values(user_id=caller.user_id, key=request.key, org_id=caller.org_id,
                             request_hash=request.request_hash, response_status=0, response_body={},
                             expires_at=func.now() + ttl)
        .on_conflict_do_nothing()
    ).rowcount
    if inserted:
        return None
    stored = conn.execute(
        select(table.c.request_hash, table.c.response_body)
        .where(table.c.user_id == caller.user_id, table.c.key == request.key)
    ).one()
    if stored.request_hash != request.request_hash:
        raise ApiError("IDEMPOTENCY_KEY_REUSED", field="Idempotency-Key")
    request.replayed = True
    return stored.response_body


def store(conn, caller, request: IdempotentRequest, status: int, body) -> None:
    """Keep the response with the key, in the create's transaction."""
    table = idempotency_key
    conn.execute(table.update().where(table.c.user_id == caller.user_id, table.c.key == request.key)
                 .values(response_status=status, response_body=body))
