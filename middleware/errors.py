"""The one error registry and the one error format.

Every error the API can answer, from any layer (connexion's routing, security and validation, the
handlers, the database), leaves as ``{"success": false, "data": null, "error": {code, message,
field?}}`` with the status registered here. ``spec/openapi.yaml`` lists the same codes in its
``ErrorCode`` enum; a test keeps the two equal.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorKind:
    status: int
    message: str


ERRORS: dict[str, ErrorKind] = {
    "VALIDATION_ERROR": ErrorKind(400, "The request is not valid"),
    "MALFORMED_REQUEST": ErrorKind(400, "The request body is not valid JSON in UTF-8"),
    "UNAUTHORIZED": ErrorKind(401, "A valid access token is required"),
    "INVALID_CREDENTIALS": ErrorKind(401, "Email or password is incorrect"),
    "INVALID_TOKEN": ErrorKind(401, "The refresh token is invalid, expired or revoked"),
    "INSUFFICIENT_SCOPE": ErrorKind(403, "The access token lacks a scope this operation requires"),
    "ORG_MISMATCH": ErrorKind(403, "The organization does not match the caller's organization"),
    "NOT_FOUND": ErrorKind(404, "The resource does not exist"),
    "METHOD_NOT_ALLOWED": ErrorKind(405, "The method is not allowed on this resource"),
    "CONFLICT": ErrorKind(409, "The request conflicts with the current state of the resource"),
    "PRECONDITION_FAILED": ErrorKind(412, "The resource changed since it was read (If-Match)"),
    "PAYLOAD_TOO_LARGE": ErrorKind(413, "The request body is too large"),
    "UNSUPPORTED_MEDIA_TYPE": ErrorKind(415, "The request body must be application/json"),
    "INVALID_REFERENCE": ErrorKind(422, "A referenced resource does not exist in this organization"),
    "BUSINESS_RULE_VIOLATION": ErrorKind(422, "The request breaks a business rule"),
    "IDEMPOTENCY_KEY_REUSED": ErrorKind(422, "The Idempotency-Key was already used with another request"),
    "PRECONDITION_REQUIRED": ErrorKind(428, "This server requires If-Match on changes"),
    "RATE_LIMITED": ErrorKind(429, "Too many requests; retry later"),
    "INTERNAL_ERROR": ErrorKind(500, "An unexpected error occurred"),
    "SERVICE_UNAVAILABLE": ErrorKind(503, "The service is temporarily unavailable; retry later"),
}

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


class ApiError(Exception):
    """An error the client should see: a registered code, a message, and the field at fault."""

    def __init__(self, code: str, message: str | None = None, *, field: str | None = None,
                 headers: dict[str, str] | None = None):
        kind = ERRORS[code]
        super().__init__(message or kind.message)
        self.code = code
        self.status = kind.status
        self.message = message or kind.message
        self.field = field
        self.headers = headers or {}


def code_for_status(status: int) -> str:
    return _CODE_FOR_STATUS.get(status, "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR")


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return json.dumps({"success": False, "data": None, "error": error}, separators=(",", ":")).encode()


def error_headers(status: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(extra or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="clinic-api"')
    return headers


# --- database errors ---------------------------------------------------------------------------
# Constraint names carry the field at fault; one map for every resource.
_UNIQUE_FIELDS = {
    "staff_email_live_key": "email",
    "inventory_item_sku_live_key": "sku",
    "role_name_key": "name",
}


def from_database_error(exc) -> ApiError | None:
    """Map a psycopg2 error to the client's error, or None when it is a server fault."""
    import psycopg2.errorcodes as codes

    orig = getattr(exc, "orig", exc)
    pgcode = getattr(orig, "pgcode", None)
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or ""
    if pgcode == codes.UNIQUE_VIOLATION:
        field = _UNIQUE_FIELDS.get(constraint)
        what = f"{field} is already in use" if field else "A record with these values already exists"
        return ApiError("CONFLICT", what, field=field)
    if pgcode == codes.FOREIGN_KEY_VIOLATION:
        field = _fk_field(getattr(diag, "message_detail", "") or "")
        return ApiError("INVALID_REFERENCE", f"{field or 'reference'} does not name a record of this organization", field=field)
    if pgcode == codes.EXCLUSION_VIOLATION and constraint == "appointment_staff_no_overlap":
        return ApiError("CONFLICT", "The staff member already has an appointment at that time", field="date")
    if pgcode in (codes.CHECK_VIOLATION, codes.NOT_NULL_VIOLATION):
        field = getattr(diag, "column_name", None) or _check_field(constraint)
        return ApiError("VALIDATION_ERROR", f"{field or 'a value'} is out of range", field=field)
    if pgcode in (codes.NUMERIC_VALUE_OUT_OF_RANGE, codes.INVALID_TEXT_REPRESENTATION,
                  codes.STRING_DATA_RIGHT_TRUNCATION, codes.DATETIME_FIELD_OVERFLOW,
                  codes.INVALID_DATETIME_FORMAT, codes.UNTRANSLATABLE_CHARACTER,
                  codes.CHARACTER_NOT_IN_REPERTOIRE):
        return ApiError("VALIDATION_ERROR", "A value is out of the range the field accepts")
    if pgcode in (codes.LOCK_NOT_AVAILABLE, codes.SERIALIZATION_FAILURE, codes.DEADLOCK_DETECTED):
        return ApiError("CONFLICT", "The record is being changed by another request; retry")
    if pgcode in (codes.QUERY_CANCELED, codes.ADMIN_SHUTDOWN, codes.CANNOT_CONNECT_NOW,
                  codes.TOO_MANY_CONNECTIONS, codes.CRASH_SHUTDOWN):
        return ApiError("SERVICE_UNAVAILABLE")
    return None


def _fk_field(detail: str) -> str | None:
    # 'Key (org_id, branch_id)=(..., ...) is not present in table "branch".'
    match = re.search(r"Key \((?:org_id, )?(\w+)\)", detail)
    return match.group(1) if match else None


def _check_field(constraint: str) -> str | None:
    # '<table>_<column>_check' is PostgreSQL's naming for inline CHECK constraints.
    match = re.match(r"^[a-z]+(?:_item|_post|_report|_payment|_log)?_(\w+)_check$", constraint)
    return match.group(1) if match else None


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
