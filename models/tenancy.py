"""Tenant scoping: the one module that compares ``org_id``.

The organization always comes from the verified token, never from the request: the security layer
builds a ``Caller``, and every statement on a tenant table is built with ``scoped()`` (or, for a
join or an insert, ``same_org()`` and ``Caller.org_id``). A row of another organization is
indistinguishable from a row that does not exist. ``tests/models/test_tenancy.py`` fails when
``org_id`` is compared anywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from errors import ApiError


# The column every tenant table carries, and the body field a client may only repeat.
TENANT_COLUMN = "org_id"


@dataclass(frozen=True)
class Caller:
    """Who is calling, for which organization, with which scopes.

    ``origin_of`` tells where the request came from (request id, client IP, user agent); it is
    asked only when a write records it, which a read never does.
    """

    user_id: str | None
    org_id: str
    scopes: frozenset[str]
    origin_of: Callable[[], dict] | None = field(default=None, compare=False, repr=False)
    # The login session of the request's token (its sid); None outside a request.
    session_id: str | None = None

    @cached_property
    def origin(self) -> dict:
        return self.origin_of() if self.origin_of is not None else {}


def scoped(table, org_id: Any, *, alias=None, deleted_too: bool = False) -> list:
    """The conditions every statement on a tenant table carries: this organization, live rows
    only (a table without soft delete, such as the append-only audit trail, has no such rows).
    ``deleted_too`` is for the audit's questions about rows that no longer exist, and for a sync's
    tombstones."""
    t = alias if alias is not None else table
    conditions = [t.c.org_id == org_id]
    if "deleted_at" in t.c and not deleted_too:
        conditions.append(t.c.deleted_at.is_(None))
    return conditions


def own_organization(organization, org_id: Any):
    """The condition that picks the caller's own ``organization`` row (its name, for instance)."""
    return organization.c.id == org_id


def same_org(left, right):
    """Join condition: two tenant tables' rows of one organization."""
    return left.c.org_id == right.c.org_id


def check_org(org_id: str | None, caller: Caller) -> None:
    """An org_id sent by the client may only repeat the caller's own."""
    if org_id is not None and org_id != caller.org_id:
        raise ApiError("ORG_MISMATCH", field="org_id")
