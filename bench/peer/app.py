"""The FastAPI peer: the benchmarked operations as a team would write them with FastAPI, asyncpg
and pydantic v2, doing the work the API does for them.

Per request, like the API (``middleware/http.py``, ``middleware/auth.py``, ``handlers/``):
- the edge: a request id (the client's ``X-Request-ID`` when well-formed, else 32 random hex
  digits) echoed back, ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff`` and frame
  denial, a body
  limit (413 before the body is read), the Prometheus request counter, latency histogram and
  in-progress gauge (shared between workers through ``PROMETHEUS_MULTIPROC_DIR``), pool gauges at
  most once a second, and the JSON log line when ``LOG_LEVEL`` is INFO or lower;
- the bearer token: PyJWT with ES256 pinned, the public key its ``kid`` names (the signing key's
  and any ``JWT_VERIFICATION_KEY_FILES``, each named by its RFC 7638 thumbprint), ``iss``, ``aud``
  and the API's required claims checked, kept in a per-worker cache of verified tokens (expiry
  checked on every use, cleared at 10,000); 401 ``UNAUTHORIZED`` with ``WWW-Authenticate``, 403 ``ORG_CONTEXT_REQUIRED`` for a
  token without an organization, 403 ``INSUFFICIENT_SCOPE`` without the operation's scope;
- the spec's rules for these operations, with pydantic: uuids, page 1..100000, pageSize 1..100,
  search 1..100 characters, enums, the embed list (known, unique, at least one), unknown query
  parameters and body fields refused, NUL refused, ``orgId``/``org_id`` equal to the caller's,
  the create body's lengths, ``date`` as YYYY-MM-DD, email containing ``@`` (Draft 4's check);
- tenant scope from the token, and ``store.py``'s statements: the access row in the read's own
  statement or right after the page, the create's reference check, audit row and outbox rows in
  one statement;
- the envelope, ``ETag`` (and 304 on ``If-None-Match``), ``Location`` on 201, RFC 8288 ``Link``
  on lists, every error as ``{success: false, data: null, error: {code, message, field?}}``.

Not here: sync (``updatedSince``, ``cursor``: 501), ``Idempotency-Key``, rate limiting (the bench
turns the API's off), tracing (off in the bench). ``bench/equality.py`` proves that the answers
are the API's before any load.

Served by bench/run.py with gunicorn and uvicorn workers, as ``clinic-api serve`` serves the API::

    PEER_DATABASE_URL=... JWT_SIGNING_KEY_FILE=... gunicorn --chdir bench/peer -k uvicorn_worker.UvicornWorker 'app:create_app()'
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
from typing import Annotated, Literal
from uuid import UUID

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from pydantic import BaseModel, ConfigDict, Strict, StringConstraints, ValidationError
from starlette.exceptions import HTTPException

import store
from store import APPOINTMENTS, PATIENTS, Origin, Refused

ENV = os.environ
JWT_ISSUER = ENV.get("JWT_ISSUER", "clinic-api")
JWT_AUDIENCE = ENV.get("JWT_AUDIENCE", "clinic-api")
MAX_BODY_BYTES = int(ENV.get("MAX_BODY_BYTES", "1048576"))
LOG_LEVEL = ENV.get("LOG_LEVEL", "INFO").upper()

ERRORS = {
    "VALIDATION_ERROR": (400, "The request is not valid"),
    "MALFORMED_REQUEST": (400, "The request body is not valid JSON in UTF-8"),
    "UNAUTHORIZED": (401, "A valid access token is required"),
    "INSUFFICIENT_SCOPE": (403, "The access token lacks a scope this operation requires"),
    "ORG_MISMATCH": (403, "The organization does not match the caller's organization"),
    "ORG_CONTEXT_REQUIRED": (403, "The access token names no organization to act in"),
    "NOT_FOUND": (404, "The resource does not exist"),
    "METHOD_NOT_ALLOWED": (405, "The method is not allowed on this resource"),
    "CONFLICT": (409, "The request conflicts with the current state of the resource"),
    "PAYLOAD_TOO_LARGE": (413, "The request body is too large"),
    "UNSUPPORTED_MEDIA_TYPE": (415, "The request body must be application/json"),
    "INVALID_REFERENCE": (422, "A referenced resource does not exist in this organization"),
    "INTERNAL_ERROR": (500, "An unexpected error occurred"),
    "NOT_IMPLEMENTED": (501, "Not part of the peer"),
    "SERVICE_UNAVAILABLE": (503, "The service is temporarily unavailable; retry later"),
}
_CODE_FOR_STATUS = {400: "VALIDATION_ERROR", 401: "UNAUTHORIZED", 403: "INSUFFICIENT_SCOPE", 404: "NOT_FOUND",
                    405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}


class ApiError(Refused):
    def __init__(self, code: str, message: str | None = None, field: str | None = None):
        super().__init__(code, message or ERRORS[code][1], field)


def error_response(code: str, message: str, field: str | None = None, headers: dict | None = None) -> Response:
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    headers = dict(headers or {})
    status = ERRORS[code][0]
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="clinic-api"')
    return Response(orjson.dumps({"success": False, "data": None, "error": error}), status_code=status,
                    headers=headers, media_type="application/json")


def ok(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps({"success": True, "data": data, "error": None}), status_code=status,
                    headers=headers, media_type="application/json")


# --- metrics and the edge -------------------------------------------------------------------------

REQUESTS = Counter("http_requests_total", "HTTP requests by method, route template and status",
                   ["method", "route", "status"])
LATENCY = Histogram("http_request_duration_seconds", "Time to answer a request, by route template",
                    ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
IN_PROGRESS = Gauge("http_requests_in_progress", "Requests being answered now", ["method"],
                    multiprocess_mode="livesum")
DB_POOL = Gauge("db_pool_connections", "Database pool connections by pool and state", ["pool", "state"],
                multiprocess_mode="livesum")
_children: dict[tuple, object] = {}


def _child(metric, *labels):
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


access_log = logging.getLogger("peer.access")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,100}")
# The API's, and the frame denial of the hardening work (issue 16): sent here either way, since the
# equality check fails on a header the API sends and the peer does not.
_SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
                     (b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'")]


class Edge:
    """One pure ASGI middleware for the cross-cutting work (as the API's edge is one layer)."""

    def __init__(self, app, database: store.Database):
        self.app, self.database = app, database
        self.pool_sampled_at = 0.0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(16).hex().encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        extra = [(b"x-request-id", request_id), *_SECURITY_HEADERS]
        method = scope["method"]
        status = 500
        _child(IN_PROGRESS, method).inc()

        async def send_with_headers(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
                response = error_response("PAYLOAD_TOO_LARGE", f"The request body exceeds {MAX_BODY_BYTES} bytes")
                return await response(scope, receive, send_with_headers)
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            _child(IN_PROGRESS, method).dec()
            _child(REQUESTS, method, template, str(status)).inc()
            _child(LATENCY, method, template).observe(elapsed)
            self._pool_gauges()
            if access_log.isEnabledFor(logging.INFO):
                claims = scope["state"].get("claims") or {}
                access_log.info("request", extra={"access": {
                    "request_id": scope["state"]["request_id"], "method": method, "route": template,
                    "path": scope["path"], "status": status, "duration_ms": round(elapsed * 1000, 2),
                    "user_id": claims.get("sub"), "org_id": claims.get("org_id")}})

    def _pool_gauges(self) -> None:
        now = time.monotonic()
        if now - self.pool_sampled_at < 1.0:
            return
        self.pool_sampled_at = now
        for name, pool in (("writer", getattr(self.database, "writer", None)),
                           ("recorded", getattr(self.database, "recorded", None))):
            if pool is not None:
                size, idle = pool.get_size(), pool.get_idle_size()
                DB_POOL.labels(name, "checked_out").set(size - idle)
                DB_POOL.labels(name, "idle").set(idle)


# --- the caller -----------------------------------------------------------------------------------

def _thumbprint(public) -> str:
    """RFC 7638: SHA-256 of the JWK's required members, sorted, without whitespace."""
    jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    members = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"),
                         sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()


def _public_keys() -> dict[str, object]:
    """The keys tokens may be signed with, by kid: the signing key's public half and the others."""
    def public_of(path: str):
        data = open(path, "rb").read()
        try:
            return serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            return serialization.load_pem_public_key(data)

    keys = {}
    paths = [ENV["JWT_SIGNING_KEY_FILE"], *ENV.get("JWT_VERIFICATION_KEY_FILES", "").split(",")]
    for path in (p.strip() for p in paths if p.strip()):
        public = public_of(path)
        keys.setdefault(_thumbprint(public), public)
    return keys


PUBLIC_KEYS = _public_keys()
_VERIFIED: dict[str, dict] = {}
_VERIFIED_MAX = 10_000
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti", "sid"]


def _claims(token: str) -> dict:
    claims = _VERIFIED.get(token)
    if claims is not None:
        if claims["exp"] > time.time():
            return claims
        _VERIFIED.pop(token, None)
    try:
        key = PUBLIC_KEYS.get(jwt.get_unverified_header(token).get("kid"))
        if key is None:
            raise jwt.InvalidKeyError("the token names no key of this server")
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=JWT_AUDIENCE, issuer=JWT_ISSUER,
                            options={"require": _REQUIRED_CLAIMS})
    except jwt.ExpiredSignatureError as exc:
        raise ApiError("UNAUTHORIZED", "The access token has expired") from exc
    except jwt.PyJWTError as exc:
        raise ApiError("UNAUTHORIZED", "The access token is invalid") from exc
    if not isinstance(claims.get("scope"), str) or not isinstance(claims.get("org_id"), (str, type(None))) \
            or not _is_uuid(claims.get("sid")):
        raise ApiError("UNAUTHORIZED", "The access token is invalid")
    if not claims.get("org_id"):
        raise ApiError("ORG_CONTEXT_REQUIRED")
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[token] = claims
    return claims


def _is_uuid(value) -> bool:
    try:
        return isinstance(value, str) and str(UUID(value)) == value.lower()
    except ValueError:
        return False


# The API keeps what it read of each session and drops it when PostgreSQL notifies a change
# (LISTEN auth_change): in a steady state, a dictionary lookup per request. The peer does the
# same lookup; it reads a session once and keeps it, without listening, since nothing ends a
# session during a bench.
_SESSIONS: dict[str, str] = {}


async def _in_session(claims: dict, database) -> None:
    sid = claims["sid"]
    if _SESSIONS.get(sid) == claims["sub"]:
        return
    member = await database.session_member(sid)
    if member is None or str(member) != claims["sub"]:
        raise ApiError("UNAUTHORIZED", "The session has ended; log in again")
    if len(_SESSIONS) >= 50_000:
        _SESSIONS.clear()
    _SESSIONS[sid] = claims["sub"]


class Caller:
    __slots__ = ("org_id", "origin")

    def __init__(self, org_id: str, origin: Origin):
        self.org_id, self.origin = org_id, origin


def require(scope_name: str):
    """The dependency of an operation secured by ``scope_name``: the verified caller."""
    async def caller(request: Request) -> Caller:
        header = request.headers.get("authorization")
        if not header or header[:7].lower() != "bearer ":
            raise ApiError("UNAUTHORIZED", "No authorization token provided")
        claims = _claims(header[7:].strip())
        if scope_name not in claims["scope"].split():
            raise ApiError("INSUFFICIENT_SCOPE")
        await _in_session(claims, request.app.state.database)
        request.scope["state"]["claims"] = claims
        client = request.scope.get("client")
        origin = Origin(claims["sub"], client[0] if client else None, request.headers.get("user-agent"),
                        request.scope["state"]["request_id"])
        return Caller(claims["org_id"], origin)
    return caller


def check_org(org_id, caller: Caller) -> None:
    if org_id is not None and str(org_id) != caller.org_id:
        raise ApiError("ORG_MISMATCH", field="org_id")


# --- the contract's rules -------------------------------------------------------------------------

PatientStatus = Literal["active", "inactive", "archived", "deceased"]
AppointmentStatus = Literal["scheduled", "confirmed", "checked_in", "completed", "cancelled", "no_show"]
Text100 = Annotated[str, StringConstraints(min_length=1, max_length=100)]
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


class PatientCreate(BaseModel):
    """The spec's PatientCreate (``additionalProperties: false``)."""

    model_config = ConfigDict(extra="forbid")

    org_id: UUID = None  # optional, but not nullable
    branch_id: UUID
    name: Text100
    email: Annotated[str, StringConstraints(max_length=100, pattern="@")] | None = None
    phone: Annotated[str, StringConstraints(max_length=20)] | None = None
    date_of_birth: Annotated[dt.date, Strict()] | None = None
    gender: Annotated[str, StringConstraints(max_length=10)] | None = None
    status: PatientStatus = None
    photo: Annotated[str, StringConstraints(max_length=2_000_000)] | None = None


def _field(loc) -> str | None:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def refuse_unknown(request: Request, known: frozenset[str]) -> None:
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise ApiError("VALIDATION_ERROR", f"{name} is not a known parameter", field=name)
        if "\x00" in value:
            raise ApiError("VALIDATION_ERROR", f"{name} may not contain NUL characters", field=name)


def embeds(raw: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if raw is None:
        return ()
    names = tuple(raw.split(","))
    if any(name not in allowed for name in names) or len(set(names)) != len(names):
        raise ApiError("VALIDATION_ERROR", f"embed: each of {', '.join(allowed)}, at most once", field="embed")
    return names


def instant(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        if not _DATE_TIME.fullmatch(value):
            raise ValueError
        return dt.datetime.fromisoformat(value.replace("z", "Z")).astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        raise ApiError("VALIDATION_ERROR", f"{name}: expected an RFC 3339 date-time with an offset",
                       field=name) from None


def etag(row: dict) -> str:
    return '"' + hashlib.sha256(f"{row['id']}|{row['updated_at'].isoformat()}".encode()).hexdigest()[:20] + '"'


def matches(header: str | None, current: str) -> bool:
    if header is None:
        return False
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or current in tags


_PAGING = ("page", "pageSize", "cursor")


def listed(request: Request, result: dict, page: int, page_size: int) -> Response:
    query = request.scope["query_string"].decode("latin-1")
    kept = "".join(f"{part}&" for part in query.split("&") if part and part.partition("=")[0] not in _PAGING)
    prefix = f"<{request.scope.get('root_path', '')}{request.url.path}?{kept}"
    last = max(1, -(-result["total"] // page_size))
    links = [f'{prefix}page=1&pageSize={page_size}>; rel="first"']
    if page > 1:
        links.append(f'{prefix}page={min(page - 1, last)}&pageSize={page_size}>; rel="prev"')
    if page < last:
        links.append(f'{prefix}page={page + 1}&pageSize={page_size}>; rel="next"')
    links.append(f'{prefix}page={last}&pageSize={page_size}>; rel="last"')
    return ok(result, headers={"Link": ", ".join(links)})


Page = Annotated[int, Query(ge=1, le=100_000)]
PageSize = Annotated[int, Query(alias="pageSize", ge=1, le=100)]
OrgId = Annotated[UUID | None, Query(alias="orgId")]
UpdatedSince = Annotated[str | None, Query(alias="updatedSince", max_length=64)]
Cursor = Annotated[str | None, Query(max_length=60, pattern=r"^-?[0-9]{1,17}\.[0-9a-f]{32}$")]
_LIST_COMMON = ("page", "pageSize", "updatedSince", "cursor", "orgId", "embed")
PATIENT_LIST_PARAMETERS = frozenset({*_LIST_COMMON, "search", "status", "branchId"})
APPOINTMENT_LIST_PARAMETERS = frozenset({*_LIST_COMMON, "patientId", "staffId", "branchId", "status", "date",
                                         "dateFrom", "dateTo"})


def no_sync(updated_since, cursor) -> None:
    if updated_since is not None:
        instant(updated_since, "updatedSince")
    if updated_since is not None or cursor is not None:
        raise ApiError("NOT_IMPLEMENTED", "Sync (updatedSince, cursor) is not part of the peer")


# --- the application ------------------------------------------------------------------------------

def create_app() -> FastAPI:
    logging.basicConfig(level=LOG_LEVEL)
    database = store.Database(
        ENV["PEER_DATABASE_URL"], pool_size=int(ENV.get("DB_POOL_SIZE", "10")),
        application_name=ENV.get("PEER_APPLICATION_NAME", "bench-peer"),
        exact_limit=int(ENV.get("COUNT_EXACT_LIMIT", "10000")),
        search_exact_limit=int(ENV.get("SEARCH_COUNT_EXACT_LIMIT", "1000")),
        retry_window_s=int(ENV.get("WEBHOOK_RETRY_WINDOW_S", "86400")))

    async def lifespan(_app):
        await database.open()
        yield
        await database.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.database = database

    @app.exception_handler(Refused)
    async def refused(_request, exc: Refused):
        return error_response(exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        field = _field(first.get("loc", ()))
        return error_response("VALIDATION_ERROR", f"{field}: {first.get('msg')}" if field else first.get("msg"),
                              field)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        code = _CODE_FOR_STATUS.get(exc.status_code, "VALIDATION_ERROR")
        return error_response(code, ERRORS[code][1], headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(_request, exc: Exception):
        logging.getLogger("peer").exception("unhandled error", exc_info=exc)
        return error_response("INTERNAL_ERROR", ERRORS["INTERNAL_ERROR"][1])

    @app.get("/health")
    async def health():
        return ok({"status": "ok"})

    @app.get("/metrics")
    async def metrics():
        if ENV.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")
        return Response(generate_latest(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/patients/{id}")
    async def get_patient(request: Request, id: UUID, embed: str | None = None,
                          caller: Caller = Depends(require("patients:read"))):
        refuse_unknown(request, frozenset({"embed"}))
        row = await database.get_row(PATIENTS, caller.org_id, caller.origin, str(id), embeds(embed, ("branch",)))
        tag = etag(row)
        if matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers={"ETag": tag})
        return ok(row, headers={"ETag": tag})

    @app.get("/patients")
    async def list_patients(request: Request, caller: Caller = Depends(require("patients:read")),
                            page: Page = 1, page_size: PageSize = 20,
                            search: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
                            status: PatientStatus | None = None,
                            branch_id: Annotated[UUID | None, Query(alias="branchId")] = None,
                            org_id: OrgId = None, updated_since: UpdatedSince = None, cursor: Cursor = None,
                            embed: str | None = None):
        refuse_unknown(request, PATIENT_LIST_PARAMETERS)
        wanted = embeds(embed, ("branch",))
        check_org(org_id, caller)
        no_sync(updated_since, cursor)
        result = await database.list_rows(
            PATIENTS, caller.org_id, caller.origin, page=page, page_size=page_size, embed=wanted,
            filters={"search": search, "status": status, "branchId": None if branch_id is None else str(branch_id)})
        return listed(request, result, page, page_size)

    @app.get("/appointments")
    async def list_appointments(request: Request, caller: Caller = Depends(require("appointments:read")),
                                page: Page = 1, page_size: PageSize = 20,
                                patient_id: Annotated[UUID | None, Query(alias="patientId")] = None,
                                staff_id: Annotated[UUID | None, Query(alias="staffId")] = None,
                                branch_id: Annotated[UUID | None, Query(alias="branchId")] = None,
                                status: AppointmentStatus | None = None,
                                date: Annotated[dt.date | None, Query()] = None,
                                date_from: Annotated[str | None, Query(alias="dateFrom")] = None,
                                date_to: Annotated[str | None, Query(alias="dateTo")] = None,
                                org_id: OrgId = None, updated_since: UpdatedSince = None, cursor: Cursor = None,
                                embed: str | None = None):
        refuse_unknown(request, APPOINTMENT_LIST_PARAMETERS)
        wanted = embeds(embed, ("patient", "staff", "branch"))
        check_org(org_id, caller)
        no_sync(updated_since, cursor)
        day = None if date is None else dt.datetime.combine(date, dt.time(), dt.timezone.utc)
        filters = {"patientId": patient_id, "staffId": staff_id, "branchId": branch_id}
        filters = {k: None if v is None else str(v) for k, v in filters.items()}
        filters.update(status=status, date=day, dateFrom=instant(date_from, "dateFrom"),
                       dateTo=instant(date_to, "dateTo"))
        result = await database.list_rows(APPOINTMENTS, caller.org_id, caller.origin, page=page,
                                          page_size=page_size, embed=wanted, filters=filters)
        return listed(request, result, page, page_size)

    @app.post("/patients", status_code=201)
    async def create_patient(request: Request, caller: Caller = Depends(require("patients:write"))):
        refuse_unknown(request, frozenset())
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise ApiError("UNSUPPORTED_MEDIA_TYPE", f"Invalid Content-type ({media or 'none'}), expected JSON data")
        body = await parse_body(await request.body(), PatientCreate)
        sent = body.model_dump(include=body.model_fields_set)
        check_org(sent.pop("org_id", None), caller)
        if "branch_id" in sent:
            sent["branch_id"] = str(sent["branch_id"])
        row = await database.create_row(PATIENTS, caller.org_id, caller.origin, sent)
        location = f"{request.scope.get('root_path', '')}{request.url.path.rstrip('/')}/{row['id']}"
        return ok(row, 201, {"ETag": etag(row), "Location": location})

    return Edge(app, database)


async def parse_body(raw: bytes, model: type[BaseModel]) -> BaseModel:
    """The body validated by pydantic straight from its bytes; the API's codes for what is wrong."""
    if not raw.strip():
        raise ApiError("VALIDATION_ERROR", "A JSON request body is required")
    if b"\\u0000" in raw and _has_nul(_loads_or_none(raw)):
        raise ApiError("MALFORMED_REQUEST", "Text may not contain NUL (U+0000) characters")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError("MALFORMED_REQUEST", f"The request body is not valid JSON: {first['msg']}") from None
        field = _field(first["loc"])
        raise ApiError("VALIDATION_ERROR", f"{field}: {first['msg']}" if field else first["msg"], field) from None


def _loads_or_none(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # pydantic says what is wrong with it


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
