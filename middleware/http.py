"""The edge of the service: one ASGI middleware around everything connexion does.

It sees every request, including those connexion answers itself (400, 401, 404, 405), so that
each gets a request id, the security headers, a rate-limit decision, a metric and a log line with
its real status. One layer instead of one per concern: each ASGI layer costs an await and a send
wrapper per message, which showed up as a fifth of a simple request's CPU.
"""
from __future__ import annotations

import hmac
import os
import re
import time

from middleware import auth, observability, telemetry
from middleware.errors import SECURITY_HEADERS, ApiError, error_body
from middleware.ratelimit import RateLimits
from middleware.routes import RouteTable
from middleware.tenancy import client_ip
from state import AppState, bind as bind_app_state

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,100}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_METRICS = "/metrics"
# The rest of a refused body is not read: the connection cannot carry another request.
_CLOSE = [(b"connection", b"close")]
_CHALLENGE = [(b"www-authenticate", b'Bearer realm="metrics"')]


def _error_message(status: int, code: str, message: str, headers: list) -> tuple[dict, dict]:
    body = error_body(code, message)
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *headers]}
    return start, {"type": "http.response.body", "body": body}


class _TooLarge(ApiError):
    """Raised from the body stream, so whichever layer is reading answers 413."""

    def __init__(self, limit: int):
        super().__init__("PAYLOAD_TOO_LARGE", f"The request body exceeds {limit} bytes")


class Edge:
    """Request id, route, method check, body limit, rate limit, response headers, metrics, log."""

    def __init__(self, app, routes: RouteTable, app_state: AppState):
        self.app = app
        self.routes = routes
        self.app_state = app_state
        self.limits: RateLimits = app_state.limits
        self.max_body_bytes = app_state.settings.max_body_bytes
        settings = app_state.settings
        self.metrics_token = settings.metrics_token.encode()
        self.metrics_open = settings.is_development and not settings.metrics_token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Each request runs in a task of its own, so this binds the app's state for that request
        # only (and for the handler thread, which runs in a copy of the task's context).
        bind_app_state(self.app_state)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        headers = dict(scope["headers"])  # request header names arrive lower-cased
        request_id = headers.get(b"x-request-id", b"")
        if not _REQUEST_ID.fullmatch(request_id):
            # 128 random bits as 32 hex digits, the shape of uuid4().hex at a fifth of its cost.
            request_id = os.urandom(16).hex().encode()
            scope["headers"] = [h for h in scope["headers"] if h[0] != b"x-request-id"]
            scope["headers"].append((b"x-request-id", request_id))
        state["request_id"] = request_id.decode()
        if scope.get("query_string", b"").count(b"embed=") > 1:
            scope["query_string"] = _join_repeated_embed(scope["query_string"])
        path, method = scope["path"], scope["method"]
        route = self.routes.match(path)
        template = route.template if route else "unmatched"
        claims = _verified_claims(headers.get(b"authorization"))
        state["claims"] = claims
        extra = [(b"x-request-id", request_id), *SECURITY_HEADERS]
        status = 500
        observability.begin(method)
        traced = telemetry.start_request(self.app_state.tracing, method, template, state)

        async def reply(message_status, code, message, more=()):
            nonlocal status
            status = message_status
            start, body = _error_message(message_status, code, message, [*extra, *more])
            await send(start)
            await send(body)

        try:
            if _CONTROL.search(path) or "//" in path:
                # Flask's router would match these where connexion's does not (it merges slashes),
                # and run the handler outside connexion's context (a 500).
                return await reply(404, "NOT_FOUND", "The resource does not exist")
            if path == _METRICS and not self.metrics_open:
                refused = self._metrics_refusal(headers.get(b"authorization"))
                if refused:
                    return await reply(*refused)
            if route is not None and method not in route.methods:
                # connexion's own 405 lists only the first route's methods.
                return await reply(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here",
                                   [(b"allow", ", ".join(route.methods).encode())])
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                return await reply(413, "PAYLOAD_TOO_LARGE", f"The request body exceeds {self.max_body_bytes} bytes",
                                   _CLOSE)
            chunked = declared is None and b"transfer-encoding" in headers
            if method in _BODY_METHODS and b"content-type" not in headers and (chunked or (declared or b"0").strip(b"0")):
                # Without a type the body would reach the handler unparsed (a 500); guessing JSON
                # would accept what a client did not say it sent.
                return await reply(415, "UNSUPPORTED_MEDIA_TYPE", "A request body needs Content-Type: application/json")
            if self.limits.enabled:
                peer = (scope.get("client") or ("unknown", 0))[0]
                forwarded = headers.get(b"x-forwarded-for")
                ip = client_ip(peer, forwarded.decode("latin-1") if forwarded else None) or "unknown"
                allowed, policy, rate_headers = self.limits.check(template, method, claims, ip)
                extra += rate_headers
                if not allowed:
                    state["rate_limited"] = policy
                    return await reply(429, "RATE_LIMITED", "Too many requests; retry later")

            async def send_with_headers(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    present = {name.lower() for name, _ in message.get("headers", [])}
                    message["headers"] = [*message.get("headers", []),
                                          *(h for h in extra if h[0] not in present)]
                await send(message)

            try:
                if chunked:
                    receive = await self._buffered(scope, receive)
                    if receive is None:
                        return  # the client went away mid-body: nobody to answer
                elif declared is not None:
                    receive = self._limited(receive)
                await self.app(scope, receive, send_with_headers)
            except _TooLarge:
                # A chunked body that outgrew the limit, on any method: refused while it is read.
                await reply(413, "PAYLOAD_TOO_LARGE", f"The request body exceeds {self.max_body_bytes} bytes", _CLOSE)
        finally:
            telemetry.end_request(traced, status, claims)
            observability.record(method, template, status, time.perf_counter() - started, state, path)

    def _metrics_refusal(self, authorization: bytes | None):
        if not self.metrics_token:
            return 404, "NOT_FOUND", "The resource does not exist"
        presented = authorization[7:].strip() if authorization and authorization[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(presented, self.metrics_token):
            return 401, "UNAUTHORIZED", "/metrics needs the METRICS_TOKEN bearer token", _CHALLENGE
        return None

    async def _buffered(self, scope, receive):
        """A chunked body read whole (within the limit), then handed on as one with a length:
        connexion takes a body without Content-Length for none at all ("RequestBody is required")."""
        limited = self._limited(receive)
        parts = []
        while True:
            message = await limited()
            if message["type"] != "http.request":
                return None
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        scope["headers"] = [(name, value) for name, value in scope["headers"] if name != b"transfer-encoding"]
        scope["headers"].append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # what follows the body: the disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    def _limited(self, receive):
        received = 0
        limit = self.max_body_bytes

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        return counted


def _join_repeated_embed(query: bytes) -> bytes:
    """``embed=a&embed=b`` -> ``embed=a,b``.

    The spec writes embed lists comma-separated (form, explode: false), as the seed does; some
    generated clients repeat the parameter instead. Both mean the same, so both are accepted.
    """
    parts = query.split(b"&")
    embeds = [p[len(b"embed="):] for p in parts if p.startswith(b"embed=")]
    others = [p for p in parts if not p.startswith(b"embed=")]
    return b"&".join([*others, b"embed=" + b"%2C".join(embeds)])


def _verified_claims(authorization: bytes | None) -> dict | None:
    """The token's claims when it is a valid bearer token; None otherwise (then the IP counts)."""
    if not authorization or authorization[:7].lower() != b"bearer ":
        return None
    try:
        return auth.verified_claims(authorization[7:].strip().decode("latin-1"))
    except Exception:
        return None
