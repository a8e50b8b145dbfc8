"""How the Flask app behind connexion is called: on the event loop, or one thread hop away.

connexion's FlaskApp runs Flask through a2wsgi, which crosses between the event loop and its
thread pool once for the call and again, blocking, for every message the WSGI side produces
(status line, each body chunk, the end): about eight thread switches per request, each a GIL
hand-over and a self-pipe wake-up of the loop. Profiled under load they cost more CPU than the
handler and its query together (/health: 2.0 ms of worker CPU with a2wsgi, 0.85 ms here).

This bridge reads the request body on the loop, runs the WSGI call with the body in memory and
buffers the response, then sends it from the loop. The call runs either on the loop itself
(REQUEST_THREADS=0, the default: no thread switch at all, one handler at a time per worker) or on
one of REQUEST_THREADS threads (one hop there and one back, handlers overlap their database waits).
Buffering is safe here: every response is a JSON document bounded by the page-size limit, and the
request body is already bounded by MAX_BODY_BYTES at the edge (which raises while it is read).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import io
from concurrent.futures import ThreadPoolExecutor

import connexion
import flask
from a2wsgi.wsgi import build_environ
from connexion.apps.flask import FlaskOperation
from connexion.decorators import FlaskDecorator
from connexion.context import operation
from connexion.http_facts import FORM_CONTENT_TYPES
from connexion.decorators.parameter import SyncParameterDecorator, prep_kwargs, unwrap_decorators
from connexion.security import SECURITY_HANDLERS, OAuthSecurityHandler
from connexion.utils import inspect_function_arguments


class _BufferedResponse:
    """start_response and write() of PEP 3333, keeping everything in memory."""

    __slots__ = ("status", "headers", "chunks")

    def __init__(self):
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info=None):
        # Nothing has reached the client yet, so a second call (with exc_info) simply replaces the
        # first: PEP 3333 allows that until the headers are sent.
        self.status = int(status.split(" ", 1)[0])
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        self.chunks = []
        return self.chunks.append


def _run_wsgi(wsgi_app, environ: dict, response: _BufferedResponse) -> None:
    result = wsgi_app(environ, response.start_response)
    try:
        for chunk in result:
            if chunk:
                response.chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


async def _read_body(receive) -> bytes | None:
    """The whole request body, or None when the client went away before sending all of it."""
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _not_http(scope, receive, send) -> None:
    """What a2wsgi did: lifespan events are acknowledged (connexion's own lifespan middleware
    normally answers them first), websockets are closed."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1000})


class FlaskBridge:
    """The ASGI application connexion calls last: the Flask app, on the loop or one thread hop away."""

    def __init__(self, wsgi_app, threads: int):
        self.wsgi_app = wsgi_app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flask") if threads else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await _not_http(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # a cut-off body must not reach a handler (it could write), and nobody waits
            return
        environ = build_environ(scope, io.BytesIO(body))
        response = _BufferedResponse()
        # With no threads the handler runs right here, on the event loop: the worker serves one
        # handler at a time (as a sync gunicorn worker does) and pays no thread switch at all.
        # connexion keeps the operation, the token info and the request in context variables that
        # the handler side reads, so a thread runs in a copy of this task's context.
        if self.executor is None:
            _run_wsgi(self.wsgi_app, environ, response)
        else:
            context = contextvars.copy_context()
            await asyncio.get_running_loop().run_in_executor(
                self.executor, context.run, _run_wsgi, self.wsgi_app, environ, response)
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        await send({"type": "http.response.body", "body": b"".join(response.chunks)})


class _RememberedNames(SyncParameterDecorator):
    """connexion's parameter decorator, minus work whose answer is known before the request.

    It turns each parameter name into its Python form (``pageSize`` -> ``page_size``) with three
    regular expressions and inflection's, per parameter and request; the answer for a name never
    changes. And it reads the body and parses the form data of every request, a GET's included,
    only for its own ``_get_body_argument`` to drop both when the operation declares no request
    body: here neither is read then (about 2.5% of a get-by-id), and files only for a form body.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sanitize_fn = functools.lru_cache(maxsize=256)(self.sanitize_fn)

    def __call__(self, function):
        arguments, has_kwargs = inspect_function_arguments(unwrap_decorators(function))

        @functools.wraps(function)
        def wrapper(request):
            if operation.is_request_body_defined:
                body = self._maybe_get_body(request, arguments=arguments, has_kwargs=has_kwargs)
                # Only form bodies carry files; asking a JSON request for them runs werkzeug's
                # form parser for nothing (about 3% of a create).
                files = request.files() if request.mimetype in FORM_CONTENT_TYPES else {}
            else:
                body, files = None, {}
            return function(**prep_kwargs(request, request_body=body, files=files, arguments=arguments,
                                          has_kwargs=has_kwargs, sanitize=self.sanitize_fn))

        return wrapper


class _DecoratedOnce(FlaskDecorator):
    """connexion's FlaskDecorator, minus the rebuilding.

    connexion builds a new decorator for every call of a view (``FlaskOperation.fn`` is a
    property), which re-decorates the handler, inspects its signature and builds a URI parser from
    the operation's parameters, every request: about 0.2 ms of a 1.6 ms get-by-id. None of it
    depends on the request, so here it happens once per operation.
    """

    _parameter_decorator_cls = _RememberedNames

    def __call__(self, function):
        decorated = self.decorate(function)
        uri_parser = None

        @functools.wraps(function)
        def view(*_args, **_kwargs):  # Flask's URL arguments: connexion reads them from the request
            nonlocal uri_parser
            if uri_parser is None:  # needs the operation, which only a request context names
                uri_parser = self.uri_parser
            return decorated(self.framework.get_request(uri_parser=uri_parser))

        return view


def _decorate_operations_once(app: flask.Flask) -> None:
    """Swap each operation's view for one decorated once (see ``_DecoratedOnce``)."""
    for endpoint, view in list(app.view_functions.items()):
        if isinstance(view, FlaskOperation):
            once = _DecoratedOnce(pythonic_params=view.pythonic_params, jsonifier=view.jsonifier)
            app.view_functions[endpoint] = once(view._fn)


def install(app: connexion.FlaskApp, threads: int) -> None:
    """Call ``app``'s Flask side through FlaskBridge, with views decorated once.

    connexion exposes no option for either, so its private FlaskASGIApp is adjusted: its a2wsgi
    adapter is replaced, and its add_api, which connexion calls when it builds the middleware
    stack on the first event (not in FlaskApp.add_api), swaps the new views as they register.
    """
    asgi_app = app._middleware_app
    asgi_app.asgi_app = FlaskBridge(asgi_app.app.wsgi_app, threads)
    register = asgi_app.add_api

    def add_api(*args, **kwargs):
        api = register(*args, **kwargs)
        _decorate_operations_once(asgi_app.app)
        return api

    asgi_app.add_api = add_api


class _OAuthHandler(OAuthSecurityHandler):
    """connexion's OAuth handler, minus a per-request ``inspect.signature`` of ``token_info``.

    It asks twice per secured request whether the token function takes ``required_scopes`` and
    ``request``; the answer never changes, and computing it was 3% of a get-by-id's CPU.
    """

    _accepts_kwarg = staticmethod(functools.cache(OAuthSecurityHandler._accepts_kwarg))


# Passed to connexion as its security_map.
SECURITY_MAP = {**SECURITY_HANDLERS, "oauth2": _OAuthHandler}
