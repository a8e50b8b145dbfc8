"""Operation handlers. Each module binds one resource's operationIds; the engine does the work."""
from __future__ import annotations

import json

import flask
from connexion.jsonifier import Jsonifier

from middleware.tenancy import check_org, current_caller
from models import crud
from models.crud import Resource
from models.idempotency import IdempotentRequest

# Context values connexion passes to handlers that take **kwargs; they are not query filters.
_CONTEXT_KEYS = ("user", "token_info", "org_id")


# How every success body is written (connexion is given the same one in app.py).
JSONIFIER = Jsonifier(json, separators=(",", ":"))


def ok(data, status: int = 200, headers: dict | None = None) -> flask.Response:
    """The success envelope, as a finished response: connexion passes a Flask response through,
    where a tuple would be unpacked and its content type inferred from the spec on every request."""
    body = JSONIFIER.dumps({"success": True, "data": data, "error": None})
    return flask.Response(body, status=status, headers=headers, content_type="application/json")


def no_content():
    return None, 204


def one(row: dict, status: int = 200):
    """A single resource, with its ETag; 304 when the client already holds this version."""
    tag = crud.etag(row)
    if status == 200 and flask.request.method == "GET" and crud.matches(flask.request.headers.get("If-None-Match"), tag):
        return None, 304, {"ETag": tag}
    return ok(row, status, {"ETag": tag})


def if_match() -> str | None:
    return flask.request.headers.get("If-Match")


def idempotent_request(body) -> IdempotentRequest | None:
    request = flask.request
    return IdempotentRequest.of(request.headers.get("Idempotency-Key"), request.method, request.path, body)


def created(resource: Resource, body: dict, *, parent_id: str | None = None):
    """Create a row (once per Idempotency-Key) and answer 201 with its ETag."""
    idempotency = idempotent_request(body)
    row = crud.create_row(resource, current_caller(), body, parent_id=parent_id, idempotency=idempotency)
    response = one(row, 201)
    if idempotency is not None and idempotency.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def crud_operations(resource: Resource) -> tuple:
    """The five standard operations of a resource, in the order list, get, create, update, delete,
    ready to be bound to its operationIds."""

    def list_(page: int = 1, page_size: int = 20, embed=None, **params):
        """List live rows of the caller's organization, newest first."""
        caller = current_caller()
        check_org(params.get("org_id"), caller)
        # pythonic_params turns a parameter named like a builtin into `type_`; filters use the plain name.
        filters = {k.rstrip("_"): v for k, v in params.items() if k not in _CONTEXT_KEYS}
        return ok(crud.list_rows(resource, caller, page=page, page_size=page_size,
                                 embed=embed, filters=filters))

    def get(id_: str, embed=None):
        """One live row of the caller's organization."""
        return one(crud.get_row(resource, current_caller(), id_, embed=embed))

    def create(body: dict):
        """Create a row in the caller's organization."""
        return created(resource, body)

    def update(id_: str, body: dict):
        """Change the fields sent."""
        return one(crud.update_row(resource, current_caller(), id_, body, if_match=if_match()))

    def delete(id_: str):
        """Soft-delete a row."""
        crud.delete_row(resource, current_caller(), id_, if_match=if_match())
        return no_content()

    return list_, get, create, update, delete
