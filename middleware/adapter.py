"""The one adapter for framework internals: every use of a private or undocumented name of
connexion (and a2wsgi) is here, for the versions ``SUPPORTED`` names; ``check_versions()`` refuses
to start on others, and ``tests/middleware/test_adapter.py`` has a test for each internal used.
Everything else in the project uses connexion's documented extension points.

What it adapts, and why (measurements in docs/decisions/):
- how Flask is called (``FlaskBridge``): on the event loop, or one thread hop away, instead of
  through a2wsgi's thread pool;
- views decorated once per operation instead of per request (``_DecoratedOnce``);
- connexion's OAuth handler without a per-request signature inspection (``SECURITY_MAP``);
- the Swagger UI layer stepped over by API calls, its documents rendered once (``SwaggerUI``),
  and turned off with SERVE_DOCS (``swagger_ui_options``);
- request validation with its validators built once per operation instead of per request
  (``RequestValidation``);
- the spec's validation rules (``middleware/validation.py``) plugged in as connexion validators
  (``VALIDATORS``, passed as the documented ``validator_map``).

How Flask is called
-------------------
connexion's FlaskApp runs Flask through a2wsgi, which crosses between the event loop and its
thread pool once for the call and again, blocking, for every message the WSGI side produces
(status line, each body chunk, the end): about eight thread switches per request, each a GIL
hand-over and a self-pipe wake-up of the loop. Profiled under load they cost more CPU than the
handler and its query together (/health: 2.0 ms of worker CPU with a2wsgi, 0.85 ms here).

This bridge reads the request body on the loop, runs the WSGI call with the body in memory and
buffers the response, then sends it from the loop. The call runs on one of REQUEST_THREADS
threads (4 by default: one hop there and one back, handlers overlap their database waits, and a
request whose database froze is answered 503 at its deadline, ``Deadlines``), or on the loop
itself (REQUEST_THREADS=0: no thread switch at all, one handler at a time per worker, and nothing
answers while a handler waits). ``/health`` always runs on the loop: it does no I/O.
Buffering is safe here: every response is a JSON document bounded by the page-size limit, and the
request body is already bounded by MAX_BODY_BYTES at the edge (which raises while it is read).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import typing as t
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

import connexion
import flask
from a2wsgi.wsgi import build_environ
from connexion.apps.flask import FlaskOperation
from connexion.context import operation
from connexion.datastructures import MediaTypeDict
from connexion.decorators import FlaskDecorator
from connexion.decorators.parameter import SyncParameterDecorator, prep_kwargs, unwrap_decorators
from connexion.http_facts import FORM_CONTENT_TYPES
from connexion.json_schema import Draft4RequestValidator, Draft4ResponseValidator, allow_nullable
from connexion import utils as connexion_utils
from connexion.middleware import ConnexionMiddleware
from connexion.middleware.request_validation import (RequestValidationAPI, RequestValidationMiddleware,
                                                     RequestValidationOperation)
from connexion.middleware.swagger_ui import SwaggerUIAPI, SwaggerUIMiddleware
from connexion.options import SwaggerUIOptions
from connexion.security import SECURITY_HANDLERS, OAuthSecurityHandler
from connexion.utils import inspect_function_arguments, is_null, is_nullable
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, JSONResponseBodyValidator
from connexion.validators.parameter import ParameterValidator
from jsonschema import Draft4Validator
from jsonschema.validators import extend
from starlette.responses import Response
import yaml

from errors import ApiError
from middleware import validation
from middleware.errors import RETRY_AFTER, error_body
from models.deadline import Deadline, bind as bind_deadline, unbind as unbind_deadline

# The versions whose internals this module was written and tested against.
SUPPORTED = {"connexion": "3.3.0", "a2wsgi": "1.10.10"}


class UnsupportedFramework(RuntimeError):
    """An installed framework version whose internals this adapter was not written for."""


def check_versions() -> None:
    """Refuse to start on a connexion or a2wsgi other than the one this module adapts."""
    wrong = {name: metadata.version(name) for name, wanted in SUPPORTED.items()
             if metadata.version(name) != wanted}
    if wrong:
        found = ", ".join(f"{name} {version} (needs {SUPPORTED[name]})" for name, version in wrong.items())
        raise UnsupportedFramework(
            f"middleware/adapter.py relies on internals of exact framework versions; installed: {found}. "
            "Install the versions pinned in setup.cfg, or adapt the module and its tests."
        )


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


def _run_before(deadline: Deadline, wsgi_app, environ: dict, response: _BufferedResponse) -> None:
    """A handler that got its thread after its deadline does not run at all."""
    if deadline.expired:
        response.status = 0
        return
    _run_wsgi(wsgi_app, environ, response)


def _answered(status: int, body: bytes) -> _BufferedResponse:
    response = _BufferedResponse()
    response.status = status
    response.headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"retry-after", RETRY_AFTER.encode())]
    response.chunks = [body]
    return response


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


@dataclass(frozen=True)
class Deadlines:
    """How long a request's handler may take before the loop answers for it (``models/deadline.py``).

    ``default_s`` for every operation, ``by_path`` for those that promise less (a probe), each with
    the answer given when its handler has not produced one by then; ``on_loop``: paths whose
    handler does no I/O and runs on the event loop, never queued behind a thread (liveness).
    """

    default_s: float
    by_path: dict[str, tuple[float, int, bytes]] = field(default_factory=dict)
    on_loop: frozenset[str] = frozenset()


# Once the deadline has cut a request's connections, its handler usually answers 503 itself within
# milliseconds; this long it is waited for before the loop answers without it.
_GRACE_S = 0.25
_UNAVAILABLE = (503, error_body("SERVICE_UNAVAILABLE", "The database did not answer in time; retry later"))


class FlaskBridge:
    """The ASGI application connexion calls last: the Flask app, on the loop or one thread hop away."""

    def __init__(self, wsgi_app, threads: int, deadlines: Deadlines | None = None):
        self.wsgi_app = wsgi_app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flask") if threads else None
        self.deadlines = deadlines or Deadlines(default_s=0.0)

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
        if self.executor is None or scope["path"] in self.deadlines.on_loop:
            _run_wsgi(self.wsgi_app, environ, response)
        else:
            response = await self._in_thread(scope["path"], environ, response)
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        await send({"type": "http.response.body", "body": b"".join(response.chunks)})

    async def _in_thread(self, path: str, environ: dict, response: _BufferedResponse) -> _BufferedResponse:
        """The handler on a thread, answered for by the loop if it outlives its deadline: a
        frozen database must not freeze the request (nor the thread, which the deadline frees)."""
        own = self.deadlines.by_path.get(path)
        seconds, status, fallback = own or (self.deadlines.default_s, *_UNAVAILABLE)
        # A path's own fallback is what its handler answers when the database fails: no wait for it.
        grace = 0.0 if own else _GRACE_S
        if not seconds:
            context = contextvars.copy_context()
            await asyncio.get_running_loop().run_in_executor(
                self.executor, context.run, _run_wsgi, self.wsgi_app, environ, response)
            return response
        deadline = Deadline(seconds)
        token = bind_deadline(deadline)
        try:
            context = contextvars.copy_context()
        finally:
            unbind_deadline(token)
        work = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
            self.executor, context.run, _run_before, deadline, self.wsgi_app, environ, response))
        done, _ = await asyncio.wait([work], timeout=deadline.remaining())
        if not done:
            deadline.expire()  # its database calls fail now, and a queued handler will not start
            done, _ = await asyncio.wait([work], timeout=grace)
        if done and not work.exception() and response.status:
            return response
        if done and work.exception():
            raise work.exception()
        return _answered(status, fallback)


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


class _OAuthHandler(OAuthSecurityHandler):
    """connexion's OAuth handler, minus a per-request ``inspect.signature`` of ``token_info``.

    It asks twice per secured request whether the token function takes ``required_scopes`` and
    ``request``; the answer never changes, and computing it was 3% of a get-by-id's CPU.
    """

    _accepts_kwarg = staticmethod(functools.cache(OAuthSecurityHandler._accepts_kwarg))


# Passed to connexion as its security_map.
SECURITY_MAP = {**SECURITY_HANDLERS, "oauth2": _OAuthHandler}


class _SpecAsWritten(SwaggerUIAPI):
    """Serves the spec as written: its ``$ref``s kept, only ``servers`` set to where the API is
    mounted (behind a path-altering proxy, its root path).

    connexion serves the resolved document instead: every ``$ref`` inlined (1 MB instead of
    160 KB), so that generators see thousands of anonymous copies of each schema."""

    def _spec_for_prefix(self, request) -> dict:
        document = dict(self.specification.raw)
        document["servers"] = [{"url": self._base_path_for_prefix(request) or "/"}]
        return document

    async def _get_openapi_yaml(self, request):
        return Response(content=as_yaml(self._spec_for_prefix(request)), status_code=200, media_type="text/yaml")


def as_yaml(document: dict) -> str:
    """The document in YAML, keys in the order written: connexion's dumper sorts them, and
    generators emit properties in document order, so a sorted copy gives a different client."""
    return yaml.dump(document, allow_unicode=True, sort_keys=False, Dumper=_NoAnchors)


class _NoAnchors(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


class SwaggerUI(SwaggerUIMiddleware):
    """connexion's Swagger UI layer, stepped over by requests that cannot be for it, and with the
    spec documents rendered once.

    It runs a starlette router for every request, only to find that an API call is none of the
    few paths it serves (``/openapi.json``, ``/ui``...) and pass it on unchanged, as here: the
    paths its routes can match all start with one of their own paths.

    It also rebuilt and re-serialised the whole resolved spec for each anonymous request of
    ``/openapi.json`` (1 MB, 0.26 s of CPU) or ``/openapi.yaml`` (2 MB, 1.7 s), on the event
    loop that serves every other request of the worker. The document only depends on the path
    and the root path, so each answer is kept after the first.
    """

    def __init__(self, app):
        super().__init__(app)
        self._prefixes: tuple[str, ...] = ()
        self._documents: dict[tuple[str, str, str], list[dict]] = {}

    def add_api(self, specification, base_path=None, arguments=None, **kwargs):
        api = _SpecAsWritten(specification, base_path=base_path, arguments=arguments,
                             default=self.default_fn, **kwargs)
        self.router.mount(api.base_path, app=api.router)
        self._prefixes = tuple(mount.path.rstrip("/") + route.path
                               for mount in self.router.routes for route in mount.routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path = scope["path"]
        if not path.startswith(self._prefixes):
            await self.app(scope, receive, send)
            return
        if not path.endswith(_SPEC_DOCUMENTS) or scope["method"] not in ("GET", "HEAD"):
            await super().__call__(scope, receive, send)
            return
        key = (scope["method"], path, scope.get("root_path", ""))
        answer = self._documents.get(key)
        if answer is None:
            answer = []

            async def keep(message):
                answer.append(message)

            await super().__call__(scope, receive, keep)
            # The keys come from the server's routes and root path, but a 404 for a near miss
            # (``/x/openapi.json``) is not worth keeping.
            if answer and answer[0].get("status") == 200 and len(self._documents) < _DOCUMENTS_KEPT:
                self._documents[key] = answer
        for message in answer:
            await send(message)


def swagger_ui_options(serve: bool) -> SwaggerUIOptions:
    """Swagger UI and the spec documents served, or neither (SERVE_DOCS)."""
    return SwaggerUIOptions(serve_spec=serve, swagger_ui=serve)


_SPEC_DOCUMENTS = ("/openapi.json", "/openapi.yaml")
_DOCUMENTS_KEPT = 16


class PreparedValidation(RequestValidationOperation):
    """connexion's request validation of one operation, with what connexion builds for every
    request built once: the parameter validator with its URI parser, and per media type the body's
    schema and validator. None of them keeps anything of a request. The content type is found
    without the type aliases connexion's helper builds on each call."""

    _BODIES_KEPT = 8  # media types whose body validator is kept: clients choose them

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._parameters: ParameterValidator | None = None
        self._bodies: dict[tuple[str, str], t.Any] = {}

    def _parameter_validator(self) -> ParameterValidator:
        if self._parameters is None:
            self._parameters = self._validator_map["parameter"](
                self._operation.parameters, uri_parser=self._uri_parser,
                strict_validation=self.strict_validation, security_query_params=self.security_query_params)
        return self._parameters

    @functools.cached_property
    def _uri_parser(self):
        """One URI parser for the parameters and every body validator, as it keeps nothing of a request."""
        return self._operation.uri_parser_class(self._operation.parameters, self._operation.body_definition())

    def extract_content_type(self, headers) -> tuple[str, str]:
        content_type = next((value.decode("latin-1") for name, value in headers if name.lower() == b"content-type"), None)
        mime_type, encoding = connexion_utils.split_content_type(content_type)
        if mime_type is None:  # the header is not required: connexion's guess
            mime_type = self._operation.consumes[0] if self._operation.consumes else "application/octet-stream"
        return mime_type, encoding or "utf-8"

    def _body_validator(self, mime_type: str, encoding: str):
        key = (mime_type, encoding)
        if key not in self._bodies:
            if len(self._bodies) >= self._BODIES_KEPT:
                self._bodies.clear()
            self._bodies[key] = self._new_body_validator(mime_type, encoding)
        return self._bodies[key]

    def _new_body_validator(self, mime_type: str, encoding: str):
        schema = self._operation.body_schema(mime_type)
        if not schema:
            return None
        try:
            validator_class = self._validator_map["body"][mime_type]
        except KeyError:
            return None  # connexion skips validation too
        return validator_class(schema=schema, required=self._operation.request_body.get("required", False),
                               nullable=is_nullable(self._operation.body_definition(mime_type)),
                               encoding=encoding, strict_validation=self.strict_validation,
                               uri_parser=self._uri_parser)

    async def __call__(self, scope, receive, send):
        self._parameter_validator().validate(scope)
        mime_type, encoding = self.extract_content_type(scope["headers"])
        self.validate_mime_type(mime_type)
        body = self._body_validator(mime_type, encoding)
        if body is not None:
            receive, scope = await body.wrap_receive(receive, scope=scope)
        await self.next_app(scope, receive, send)


class _PreparedValidationAPI(RequestValidationAPI):
    def make_operation(self, operation) -> PreparedValidation:
        return PreparedValidation(self.next_app, operation=operation, strict_validation=self.strict_validation,
                                  validator_map=self.validator_map)


class RequestValidation(RequestValidationMiddleware):
    api_cls = _PreparedValidationAPI


# connexion's middleware stack with its Swagger UI and request validation layers replaced. A tuple:
# each app needs a list of its own, since connexion inserts added middlewares into the one it is given.
_REPLACED = {SwaggerUIMiddleware: SwaggerUI, RequestValidationMiddleware: RequestValidation}
MIDDLEWARES = tuple(_REPLACED.get(layer, layer) for layer in ConnexionMiddleware.default_middlewares)


# --- the contract's validation rules as connexion validators ---------------------------------------

# connexion's OpenAPI dialect of Draft 4 plus the contract's keywords. OpenAPI 3.0 writes a nullable
# reference as {nullable: true, allOf: [$ref]}; null is let through it.
_KEYWORDS = {"allOf": allow_nullable(Draft4Validator.VALIDATORS["allOf"]), **validation.KEYWORDS}
_SCHEMA_VALIDATORS = {False: extend(Draft4RequestValidator, _KEYWORDS),
                      True: extend(Draft4ResponseValidator, _KEYWORDS)}
# Each schema is compiled once: connexion hands the validators the same schema objects on every
# request, and each key is held with its schema so that an id is never reused for another.
_compiled: dict[tuple[int, bool], tuple[dict, t.Any]] = {}


def compiled(schema: dict, *, response: bool = False):
    """The JSON-schema validator of one schema of the spec: for a request, ``RequestRules``
    (jsonschema_rs's verdict first); for a response, jsonschema's."""
    key = (id(schema), response)
    cached = _compiled.get(key)
    if cached is None or cached[0] is not schema:
        validator = _SCHEMA_VALIDATORS[response](schema, format_checker=validation.FORMAT_CHECKER)
        # Responses are the API's own, validated in tests only: jsonschema alone, the reference.
        cached = (schema, validator if response else validation.RequestRules(validator))
        _compiled[key] = cached
    return cached[1]


class BodyValidator(JSONRequestBodyValidator):
    """JSON bodies: 400s that name the field, and for bodies that cannot be read (connexion
    issue 1860)."""

    @property
    def _validator(self):
        return compiled(self._schema)

    async def _parse(self, stream, scope) -> t.Any:
        return validation.parse_json(b"".join([message async for message in stream]), self._encoding)

    def _validate(self, body: t.Any) -> None:
        validation.check_body(compiled(self._schema), body)


class ResponseValidator(JSONResponseBodyValidator):
    @property
    def validator(self):
        return compiled(self._schema, response=True)


class ParametersValidator(ParameterValidator):
    """Query, path and header validation that names the parameter at fault, each schema compiled
    once (connexion deep-copies each parameter and builds a validator for it on every request)."""

    def __init__(self, parameters, uri_parser, strict_validation=False, security_query_params=None):
        # connexion appends a path item's parameters to the operation's own list in place
        # (operations/openapi.py, ``self._parameters += path_parameters``) each time it builds the
        # operation, once per middleware: GET /patients/{id} arrived with ``id`` six times, and
        # each copy was validated. One check per (location, name) is what the spec means.
        unique = {(p["in"], p["name"]): p for p in parameters}
        super().__init__(list(unique.values()), uri_parser, strict_validation, security_query_params)

    @staticmethod
    def validate_parameter(parameter_type, value, param, param_name=None):
        if is_nullable(param) and is_null(value):
            return None
        if value is None:
            if param.get("required"):
                return f"Missing {parameter_type} parameter '{param['name']}'"
            return None
        return validation.parameter_problem(compiled(param.get("schema", param)), value)

    def validate_request(self, request):
        validation.refuse_nul_parameters(request.query_params)
        if self.strict_validation:
            extra = self.validate_query_parameter_list(request, security_params=self.security_query_params)
            if extra:
                name = sorted(extra)[0]
                raise ApiError("VALIDATION_ERROR", f"{name} is not a known query parameter", field=name)
        checks = (
            ("query", self.validate_query_parameter),
            ("path", self.validate_path_parameter),
            ("header", self.validate_header_parameter),
            ("cookie", self.validate_cookie_parameter),
        )
        for location, check in checks:
            for param in self.parameters.get(location, []):
                problem = check(param, request)
                if problem:
                    validation.refuse_parameter(param["name"], problem)


VALIDATORS = {
    **VALIDATOR_MAP,
    "parameter": ParametersValidator,
    "body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": BodyValidator}),
    "response": MediaTypeDict({**VALIDATOR_MAP["response"], "*/*json": ResponseValidator}),
}


def install(app: connexion.FlaskApp, threads: int, deadlines: Deadlines | None = None) -> None:
    """Call ``app``'s Flask side through FlaskBridge, with views decorated once.

    connexion exposes no option for either, so its private FlaskASGIApp is adjusted: its a2wsgi
    adapter is replaced, and its add_api, which connexion calls when it builds the middleware
    stack on the first event (not in FlaskApp.add_api), swaps the new views as they register.
    """
    asgi_app = app._middleware_app
    asgi_app.asgi_app = FlaskBridge(asgi_app.app.wsgi_app, threads, deadlines)
    register = asgi_app.add_api

    def add_api(*args, **kwargs):
        api = register(*args, **kwargs)
        _decorate_operations_once(asgi_app.app)
        return api

    asgi_app.add_api = add_api
