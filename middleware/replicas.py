"""Read-your-writes with read replicas: a client's reads wait for its last write on the primary.

After a request that may have written (any method but GET and HEAD, answered below 400), the
response carries the primary's WAL position in a cookie. A GET presenting it is read from a
replica only once that replica has replayed that position (``models.database.read``); until
then the primary answers. The cookie lives as long as a replica may lag and still serve reads,
plus a probe interval: by then every replica fit to serve has replayed the write anyway.
Installed only when DATABASE_REPLICA_URLS names replicas; otherwise nothing here runs.
"""
from __future__ import annotations

import math

import flask

from models import database

COOKIE = "clinic_read_after"
_READS = frozenset({"GET", "HEAD"})
_MAX_DIGITS = 20  # a WAL position is a 64-bit number of bytes


def install(flask_app: flask.Flask, pools: database.Pools) -> None:
    """Route each request's reads, and remember each write's position (only with replicas)."""
    if not pools.replicas:
        return
    max_age = math.ceil(pools.max_lag_seconds + database.Probe.INTERVAL_SECONDS) + 1
    flask_app.before_request(_route_reads)
    flask_app.after_request(lambda response: _remember_write(response, max_age))


def _route_reads() -> None:
    request = flask.request
    database.route_reads(_floor(request.cookies.get(COOKIE)) if request.method in _READS else None)


def _floor(value: str | None) -> int:
    """The position a read must find replayed; 0 (none) for a missing or malformed cookie, which
    can only make a read come from a replica that is up and close behind."""
    if value and value.isdigit() and len(value) <= _MAX_DIGITS:
        return int(value)
    return 0


def _remember_write(response: flask.Response, max_age: int) -> flask.Response:
    if flask.request.method in _READS or response.status_code >= 400:
        return response
    position = database.write_position()
    if position is not None:
        # Not Secure: it must come back over plain HTTP behind a TLS-terminating proxy too, and
        # it holds nothing secret: a forged value only sends that client's reads to the primary.
        response.set_cookie(COOKIE, str(position), max_age=max_age, path="/", httponly=True, samesite="Lax")
    return response
