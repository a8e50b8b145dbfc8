"""Operation handlers: one module per resource, one function per operationId, the engine doing the work.

``operationId: listPatients`` with ``x-openapi-router-controller: handlers.patients`` is served by
``handlers.patients.list_patients``; the functions here are what those modules call.
"""
from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any, Mapping

import flask
import orjson
from connexion.jsonifier import Jsonifier

import config
import state
from errors import ApiError
from middleware.tenancy import current_caller
from models import crud
from models.crud import Resource
from models.idempotency import IdempotentRequest
from models.tenancy import check_org

# Context values connexion passes to handlers that take **kwargs; they are not query filters.
_CONTEXT_KEYS = ("user", "token_info", "org_id")


def _as_json(value):
    # What orjson leaves to its caller among the values rows hold: NUMERIC columns, written as
    # numbers, as connexion's encoder writes them.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode(data) -> bytes:
    """A body as JSON (UTF-8): datetimes, dates and UUIDs as connexion's encoder writes them,
    a naive datetime taken as UTC. Keys may be SQLAlchemy's column names, a subclass of str that
    orjson takes only with OPT_NON_STR_KEYS."""
    return orjson.dumps(data, default=_as_json, option=_OPTIONS)


_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


class _Encoder:
    """orjson behind connexion's Jsonifier, for the bodies connexion writes itself. Request bodies
    are still read by the standard library: what a request may hold stays as it was."""

    @staticmethod
    def dumps(data, **_connexion_defaults) -> str:
        return encode(data).decode()

    loads = staticmethod(json.loads)


# How every success body is written (connexion is given the same one in app.py).
JSONIFIER = Jsonifier(_Encoder)


def ok(data, status: int = 200, headers: dict | None = None) -> flask.Response:
    """The success envelope, as a finished response: connexion passes a Flask response through,
    where a tuple would be unpacked and its content type inferred from the spec on every request."""
    body = encode({"success": True, "data": data, "error": None})
    return flask.Response(body, status=status, headers=headers, content_type="application/json")


def no_content():
    return None, 204


def one(row: dict, status: int = 200):
    """A single resource, with its ETag; 304 when the client already holds this version."""
    tag = etag(row)
    if status == 200 and flask.request.method == "GET" and matches(flask.request.headers.get("If-None-Match"), tag):
        return None, 304, {"ETag": tag}
    return ok(row, status, {"ETag": tag})


# --- versions: ETag, If-Match, If-None-Match -----------------------------------------------------

def etag(row: Mapping[str, Any]) -> str:
    """A strong ETag that changes whenever the row does: every write moves updated_at."""
    updated = row["updated_at"]
    stamp = updated.isoformat() if hasattr(updated, "isoformat") else str(updated)
    return '"' + hashlib.sha256(f"{row['id']}|{stamp}".encode()).hexdigest()[:20] + '"'


def matches(header: str | None, current: str) -> bool:
    """Strong comparison against an If-Match / If-None-Match list ('*' matches any)."""
    if header is None:
        return False
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or current in tags


def if_match() -> crud.Precondition | None:
    """The request's If-Match as the engine's precondition on the locked row (428 without one when
    REQUIRE_IF_MATCH is on)."""
    header = flask.request.headers.get("If-Match")
    if header is None:
        if config.current().require_if_match:
            raise ApiError("PRECONDITION_REQUIRED", "Send If-Match with the ETag you last read", field="If-Match")
        return None

    def expect(row: Mapping[str, Any]) -> None:
        current = etag(row)
        if not matches(header, current):
            raise ApiError("PRECONDITION_FAILED", f"The resource changed; its current version is {current}",
                           field="If-Match", headers={"ETag": current})

    return expect


def idempotent_request(body) -> IdempotentRequest | None:
    request = flask.request
    return IdempotentRequest.of(request.headers.get("Idempotency-Key"), request.method, request.path, body)


def created(resource: Resource, body: dict, *, parent_id: str | None = None):
    """Create a row (once per Idempotency-Key) and answer 201 with its ETag and Location."""
    idempotency = idempotent_request(body)
    row = crud.create_row(resource, current_caller(), body, parent_id=parent_id, idempotency=idempotency)
    return created_answer(row, idempotency)


def created_answer(row: dict, idempotency: IdempotentRequest | None):
    """201 with the new row, its ETag and Location (and whether it is a replay)."""
    response = one(row, 201)
    request = flask.request
    response.headers["Location"] = f"{request.script_root}{request.path.rstrip('/')}/{row['id']}"
    if idempotency is not None and idempotency.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def listed(result: dict, page: int, page_size: int) -> flask.Response:
    """A page of a list, with RFC 8288 ``Link`` relations to the first, previous, next and last
    pages: the request's own query with ``page`` changed (a path-absolute reference, so it holds
    behind a proxy's root path). A sync page links to its first page and, while there is more,
    to the next one by cursor."""
    request = flask.request
    # The rest of the query as the client wrote it (already URL-encoded: nothing to decode and
    # encode again); page numbers and cursors (digits, hex and a dot) need no escaping.
    kept = "".join(f"{part}&" for part in request.query_string.decode("latin-1").split("&")
                   if part and part.partition("=")[0] not in _PAGING)
    prefix = f"<{request.script_root}{request.path}?{kept}"
    if "next_cursor" in result:
        links = [f'{prefix}pageSize={page_size}>; rel="first"']
        if result["has_more"]:
            links.append(f'{prefix}cursor={result["next_cursor"]}&pageSize={page_size}>; rel="next"')
        return ok(result, headers={"Link": ", ".join(links)})
    last = max(1, -(-result["total"] // page_size))
    links = [f'{prefix}page=1&pageSize={page_size}>; rel="first"']
    if page > 1:
        links.append(f'{prefix}page={min(page - 1, last)}&pageSize={page_size}>; rel="prev"')
    if page < last:
        links.append(f'{prefix}page={page + 1}&pageSize={page_size}>; rel="next"')
    links.append(f'{prefix}page={last}&pageSize={page_size}>; rel="last"')
    return ok(result, headers={"Link": ", ".join(links)})


_PAGING = ("page", "pageSize", "cursor")


def resource(name: str) -> Resource:
    """The app's descriptor of a resource, as completed from its spec at start-up."""
    return state.current().resources[name]


# --- the standard operations, which each resource module binds to its operationIds ----------------

def list_of(name: str, page: int = 1, page_size: int = 20, embed=None, parent_id: str | None = None,
            updated_since=None, cursor=None, **params):
    """One page of live rows of the caller's organization, newest first, with Link headers (or,
    with updatedSince or cursor, what changed, to sync)."""
    caller = current_caller()
    check_org(params.pop("org_id", None), caller)
    # pythonic_params turns a parameter named like a builtin into `type_`; filters use the plain name.
    filters = {k.rstrip("_"): v for k, v in params.items() if k not in _CONTEXT_KEYS}
    return listed(crud.list_rows(resource(name), caller, page=page, page_size=page_size, embed=embed,
                                 filters=filters, parent_id=parent_id, updated_since=updated_since,
                                 cursor=cursor), page, page_size)


def one_of(name: str, row_id: str, *, embed=None, parent_id: str | None = None):
    """One live row of the caller's organization, with its ETag."""
    return one(crud.get_row(resource(name), current_caller(), row_id, embed=embed, parent_id=parent_id))


def create_in(name: str, body: dict, *, parent_id: str | None = None):
    """Create a row in the caller's organization (once per Idempotency-Key): 201 with its ETag."""
    return created(resource(name), body, parent_id=parent_id)


def update_in(name: str, row_id: str, body: dict, *, parent_id: str | None = None):
    """Change the fields sent, under If-Match when the client sends it."""
    return one(crud.update_row(resource(name), current_caller(), row_id, body, parent_id=parent_id,
                               expect=if_match()))


def delete_in(name: str, row_id: str, *, parent_id: str | None = None):
    """Soft-delete a row, under If-Match when the client sends it."""
    crud.delete_row(resource(name), current_caller(), row_id, parent_id=parent_id, expect=if_match())
    return no_content()


def changed(name: str, row_id: str, change, *, action: str):
    """Apply one of the resource's own actions (a like, a write-off) to a row, audited as ``action``."""
    return one(crud.change_row(resource(name), current_caller(), row_id, change, action=action))
