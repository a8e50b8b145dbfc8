"""The serving layer: what gunicorn and uvicorn do before the app sees a request, and at SIGTERM.

``clinic-api serve`` runs gunicorn with ``Worker``, a uvicorn worker whose HTTP protocol is
uvicorn's httptools one with the limits the edge (``middleware/http.py``) cannot enforce, because
they apply before there is a request to hand it:

- the request line and headers are bounded in bytes (``MAX_HEADER_BYTES``) and in number
  (``MAX_HEADER_COUNT``): beyond, 431 ``HEADERS_TOO_LARGE`` in the error envelope, and the
  connection is closed. uvicorn's httptools protocol has no such bound (a 16 MiB header, or
  20,000 headers, were read whole), and gunicorn's ``limit_request_*`` apply to its own parser only;
- a client that has not sent its whole request head ``HEADER_TIMEOUT_S`` after connecting, or
  after the first byte of its next request, is disconnected (uvicorn's keep-alive timer stops
  at the first byte, so a client sending a byte a second held its socket forever);
- a request uvicorn cannot parse is answered 400 in the envelope, not uvicorn's plain text;
- at SIGTERM, a keep-alive connection with no request in flight is not closed at once (a request
  already on its way would meet a reset): for ``SHUTDOWN_LINGER_S`` it is still read, each
  request it carries answered with ``Connection: close``; then the server half-closes it and reads
  what is left before closing, so the client sees an end of stream, never a reset;
- ``X-Forwarded-For`` is believed only from ``TRUSTED_PROXIES``: uvicorn's default trusts
  127.0.0.1, so a client on the host could pick its own address for the audit and the limits.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from config import Settings
from errors import ERRORS
from middleware.errors import SECURITY_HEADERS, error_body

log = logging.getLogger(__name__)

# How long an idle keep-alive connection is still read after SIGTERM, and how long a half-closed
# one may take to send what it had in flight: a request sent just before the signal arrives
# well within this on any network a load balancer sits on.
SHUTDOWN_LINGER_S = 1.0
DRAIN_S = 2.0
# The security headers the edge adds to every answer of the app, on this layer's answers too.
_STATIC_HEADERS = b"".join(name + b": " + value + b"\r\n" for name, value in SECURITY_HEADERS)


class _Refused(Exception):
    """Raised from a parser callback: the request head broke a limit."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _answer(code: str, message: str) -> bytes:
    body = error_body(code, message)
    status = ERRORS[code].status
    reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}[status]
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (status, reason), b"content-type: application/json\r\n",
                     b"content-length: %d\r\n" % len(body), _STATIC_HEADERS, b"connection: close\r\n\r\n", body])


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds and the shutdown described above."""

    max_head_bytes = 32 * 1024
    max_header_count = 100
    head_timeout_s = 5.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: str | None = None
        self._draining = False
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    # --- parser callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._header_count = 0
        if self._head_timer is None:  # the first byte of a request: its head must follow in time
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_header_count:
            raise _Refused(f"A request may carry at most {self.max_header_count} headers")
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: the server is stopping

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            raise _Refused(f"The request line and headers exceed {self.max_head_bytes} bytes")

    # --- refusals ---------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, which a refusal from a callback is too
        (httptools wraps it; this runs in uvicorn's handler of that error)."""
        self._stop_head_timer()
        refusal = _refusal_in_flight()
        if refusal is not None:
            self.transport.write(_answer("HEADERS_TOO_LARGE", refusal))
        else:
            self.transport.write(_answer("MALFORMED_REQUEST", "The request is not valid HTTP/1.1"))
        self.transport.close()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("closed a connection whose request head did not arrive within %ss", self.head_timeout_s)
            self.transport.close()

    def _stop_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    # --- shutdown ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Called by uvicorn at SIGTERM, for each open connection."""
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(SHUTDOWN_LINGER_S, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if (self.cycle is not None and not self.cycle.response_complete) or self._head_timer is not None:
            return  # a request arrived meanwhile: it is answered with Connection: close
        self._unset_keepalive_if_required()
        # Half-close, then read until the client closes too: closing a socket with unread input
        # sends a reset, which a client reads as "the server failed", not "the server left".
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError):
            self.transport.close()
            return
        self.parser = _Discarding()
        self.loop.call_later(DRAIN_S, self.transport.close)


class _Discarding:
    """The parser of a half-closed connection: whatever still arrives is read and dropped."""

    def feed_data(self, _data: bytes) -> None:
        return None


def _refusal_in_flight() -> str | None:
    exc = sys.exc_info()[1]
    while exc is not None:
        if isinstance(exc, _Refused):
            return exc.message
        exc = exc.__context__
    return None


def protocol_for(settings: Settings) -> type[Protocol]:
    """The protocol class with this deployment's limits."""
    return type("Protocol", (Protocol,), {"max_head_bytes": settings.max_header_bytes,
                                          "max_header_count": settings.max_header_count,
                                          "head_timeout_s": float(settings.header_timeout_s)})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn is told, beside what gunicorn's worker passes it."""
    trusted = list(settings.trusted_proxies)
    return {
        "loop": "auto",
        "http": protocol_for(settings),
        # No proxy trusted: uvicorn leaves the peer address alone, whatever X-Forwarded-For says.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted,
    }


def worker_class(settings: Settings) -> type:
    """gunicorn's worker: uvicorn with the options above."""
    return type("Worker", (UvicornWorker,), {"CONFIG_KWARGS": uvicorn_options(settings)})


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn's settings for ``clinic-api serve``."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": worker_class(settings),
        "graceful_timeout": 30,
        "accesslog": None,
    }
