"""The one error format, for every layer.

Whatever is raised (connexion's routing, security and validation, the handlers, the database)
leaves as ``{"success": false, "data": null, "error": {code, message, field?}}`` with the status
the registry (``errors.py``) gives its code.
"""
from __future__ import annotations

import json
import logging

from errors import ApiError, from_database_error

log = logging.getLogger(__name__)

# On every answer, the app's (middleware/http.py) and the serving layer's (middleware/server.py).
# Patient data must not be cached by browsers or proxies, nor content-sniffed; no page may frame
# ours (clickjacking of Swagger UI's login): the old header for old browsers, CSP for the others.
SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'")]

# Statuses connexion and Starlette raise themselves, and the code each becomes.
_CODE_FOR_STATUS = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "INSUFFICIENT_SCOPE",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "BUSINESS_RULE_VIOLATION",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}


def code_for_status(status: int) -> str:
    return _CODE_FOR_STATUS.get(status, "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR")


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return json.dumps({"success": False, "data": None, "error": error}, separators=(",", ":")).encode()


# Seconds a client is asked to wait after a 503: the database, or a pool of connections to it,
# is gone or saturated; a moment later it has often recovered (a restart, a failover).
RETRY_AFTER = "2"


def error_headers(status: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(extra or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="clinic-api"')
    elif status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER)
    return headers


# --- rendering, for every layer ------------------------------------------------------------------

def to_api_error(exc: BaseException) -> ApiError:
    """Whatever was raised, the ApiError the client should see."""
    from connexion.exceptions import OAuthScopeProblem, ProblemException
    from sqlalchemy.exc import DBAPIError
    from starlette.exceptions import HTTPException

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, OAuthScopeProblem):
        return ApiError("INSUFFICIENT_SCOPE")
    if isinstance(exc, ProblemException):
        if exc.status >= 500:
            log.error("server error from connexion: %s %s", exc.title, exc.detail)
        code = code_for_status(exc.status)
        return ApiError(code, exc.detail if exc.status < 500 and exc.detail else None,
                        headers=dict(exc.headers or {}))
    if isinstance(exc, HTTPException):
        code = code_for_status(exc.status_code)
        return ApiError(code, headers=dict(exc.headers or {}))
    if isinstance(exc, DBAPIError):
        mapped = from_database_error(exc)
        if mapped is not None:
            return mapped
        if exc.connection_invalidated or _is_connection_error(exc):
            return ApiError("SERVICE_UNAVAILABLE")
    if _is_pool_timeout(exc):
        return ApiError("SERVICE_UNAVAILABLE")
    log.exception("unhandled error", exc_info=exc)
    return ApiError("INTERNAL_ERROR")


def _is_connection_error(exc) -> bool:
    import psycopg2

    return isinstance(getattr(exc, "orig", None), (psycopg2.OperationalError, psycopg2.InterfaceError))


def _is_pool_timeout(exc) -> bool:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return isinstance(exc, PoolTimeout)


def connexion_handler(_request, exc):
    """Error handler registered on the connexion app, for errors outside the Flask handlers."""
    from connexion.lifecycle import ConnexionResponse

    error = to_api_error(exc)
    return ConnexionResponse(
        status_code=error.status,
        body=error_body(error.code, error.message, error.field),
        content_type="application/json",
        headers=error_headers(error.status, error.headers),
    )


def flask_handler(exc):
    """The same, for errors raised inside handlers (they never leave Flask)."""
    import flask

    error = to_api_error(exc)
    response = flask.Response(error_body(error.code, error.message, error.field),
                              status=error.status, content_type="application/json")
    for name, value in error_headers(error.status, error.headers).items():
        response.headers[name] = value
    return response
