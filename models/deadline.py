"""A request's deadline for its database work, enforced from outside the thread that waits.

A frozen database (a stopped server, a dead network path that still accepts packets) answers
nothing, so neither ``statement_timeout`` (the server's) nor a TCP timeout ever fires: a handler
thread waits on its socket forever. The thread that serves the request's answer (the worker's
event loop, ``middleware/adapter.py``) gives each request a ``Deadline``; the pools record which
connections the request's thread holds (``track``); when the deadline passes, ``expire()`` shuts
those sockets down, so the waiting driver call fails at once, the connection is discarded and the
server, once it wakes, rolls its transaction back; any later checkout in that request fails with
503 too. A statement the server had already received when its socket was shut down may still run
when the server wakes (a COMMIT included): the client got a 503 and cannot know, exactly as after
a network failure; ``Idempotency-Key`` makes the retry safe.
"""
from __future__ import annotations

import contextvars
import os
import socket
import threading
import time

import sqlalchemy as sa

from errors import ApiError

_current: contextvars.ContextVar["Deadline | None"] = contextvars.ContextVar("clinic_api_deadline", default=None)


class Deadline:
    """When a request's database work must be over, and the connections it holds meanwhile."""

    __slots__ = ("at", "expired", "_held", "_lock")

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.expired = False
        self._held: set = set()
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def hold(self, dbapi_connection) -> None:
        with self._lock:
            if self.expired:
                raise _exceeded()
            self._held.add(dbapi_connection)

    def release(self, dbapi_connection) -> None:
        with self._lock:
            self._held.discard(dbapi_connection)

    def expire(self) -> int:
        """Cut every connection the request holds; returns how many were cut."""
        with self._lock:
            self.expired = True
            held, self._held = self._held, set()
        for connection in held:
            _shut_down(connection)
        return len(held)


def _exceeded() -> ApiError:
    return ApiError("SERVICE_UNAVAILABLE", "The database did not answer in time; retry later")


def _shut_down(dbapi_connection) -> None:
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # already closed
        return
    # shutdown() acts on the socket, not the descriptor: a duplicate reaches the driver's socket,
    # and closing the duplicate leaves the driver's descriptor to the driver.
    try:
        with socket.socket(fileno=os.dup(fd)) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def bind(deadline: Deadline):
    """Make ``deadline`` the current one in this context (a handler thread runs in a copy of it)."""
    return _current.set(deadline)


def unbind(token) -> None:
    _current.reset(token)


def track(engine: sa.engine.Engine) -> None:
    """Record on the current deadline each connection a request checks out of ``engine``."""

    def checkout(dbapi_connection, _record, _proxy) -> None:
        deadline = _current.get()
        if deadline is not None:
            deadline.hold(dbapi_connection)

    def checkin(dbapi_connection, _record) -> None:
        deadline = _current.get()
        if deadline is not None and dbapi_connection is not None:
            deadline.release(dbapi_connection)

    sa.event.listen(engine, "checkout", checkout)
    sa.event.listen(engine, "checkin", checkin)
