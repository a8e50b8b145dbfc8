"""ASGI middleware that wraps every request, including those connexion rejects itself."""
from __future__ import annotations

import re
import uuid
from starlette.datastructures import MutableHeaders

from middleware.errors import error_body
from middleware.routes import RouteTable

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


async def send_error(send, status: int, code: str, message: str, headers: dict | None = None) -> None:
    """Answer in the error format from ASGI middleware (outside connexion's exception handling)."""
    body = error_body(code, message)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class RequestId:
    """Honour a well-formed ``X-Request-ID`` or make one; the handlers and the response see it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = MutableHeaders(scope=scope)
        request_id = headers.get("x-request-id", "")
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
            headers["x-request-id"] = request_id
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class SecurityHeaders:
    """Patient data must not be cached by browsers or proxies, nor content-sniffed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Cache-Control", "no-store")
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimit:
    """Refuse bodies over the limit before anything reads them into memory (413)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = MutableHeaders(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await send_error(send, 413, "PAYLOAD_TOO_LARGE",
                                    f"The request body exceeds {self.max_bytes} bytes")
        received = 0
        too_large = False

        async def counted_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge()
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_error(send, 413, "PAYLOAD_TOO_LARGE",
                                 f"The request body exceeds {self.max_bytes} bytes")
        except Exception:
            # A chunked body over the limit can surface wrapped by inner layers.
            if too_large and not started:
                await send_error(send, 413, "PAYLOAD_TOO_LARGE",
                                 f"The request body exceeds {self.max_bytes} bytes")
            else:
                raise


class _TooLarge(Exception):
    pass


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MethodCheck:
    """405 with the full ``Allow`` list (connexion's lists only the first route's methods).

    Also answers 404 for paths with control characters: connexion's router rejects them but
    Flask's matches them and would run the handler outside connexion's context (a 500).
    """

    def __init__(self, app, routes: RouteTable):
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _CONTROL.search(scope["path"]):
            return await send_error(send, 404, "NOT_FOUND", "The resource does not exist")
        route = self.routes.match(scope["path"])
        if route is not None and scope["method"] not in route.methods:
            return await send_error(send, 405, "METHOD_NOT_ALLOWED", f"{scope['method']} is not allowed here",
                                    headers={"Allow": ", ".join(route.methods)})
        await self.app(scope, receive, send)
