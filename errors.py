"""The one error registry: every code the API can answer, its HTTP status and its meaning.

It sits at the bottom of the layers (no web framework, no database session): the data layer
raises ``ApiError`` with a registered code, and ``middleware/errors.py`` renders it, from any
layer, as ``{"success": false, "data": null, "error": {code, message, field?}}``.
``spec/openapi.yaml`` lists the same codes in its ``ErrorCode`` enum; a test keeps the two equal.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


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
    "INVALID_MFA_CODE": ErrorKind(401, "The one-time code is wrong or used, or the MFA challenge expired"),
    "INSUFFICIENT_SCOPE": ErrorKind(403, "The access token lacks a scope this operation requires"),
    "ORG_MISMATCH": ErrorKind(403, "The organization does not match the caller's organization"),
    "NOT_AUTHOR": ErrorKind(403, "Only the record's author or an admin may change it"),
    "ORG_CONTEXT_REQUIRED": ErrorKind(403, "The access token names no organization to act in"),
    "ORGANIZATION_REQUIRED": ErrorKind(403, "This login belongs to several organizations: POST /auth/login with org_id"),
    "MFA_REQUIRED": ErrorKind(403, "This account logs in with a second factor: POST /auth/login, then /auth/mfa/verify"),
    "NOT_FOUND": ErrorKind(404, "The resource does not exist"),
    "METHOD_NOT_ALLOWED": ErrorKind(405, "The method is not allowed on this resource"),
    "CONFLICT": ErrorKind(409, "The request conflicts with the current state of the resource"),
    "PRECONDITION_FAILED": ErrorKind(412, "The resource changed since it was read (If-Match)"),
    "PAYLOAD_TOO_LARGE": ErrorKind(413, "The request body is too large"),
    "UNSUPPORTED_MEDIA_TYPE": ErrorKind(415, "The request body must be application/json"),
    "INVALID_REFERENCE": ErrorKind(422, "A referenced resource does not exist in this organization"),
    "BUSINESS_RULE_VIOLATION": ErrorKind(422, "The request breaks a business rule"),
    "IDEMPOTENCY_KEY_REUSED": ErrorKind(422, "The Idempotency-Key was already used with another request"),
    "WEBHOOK_TARGET_REFUSED": ErrorKind(422, "The webhook URL is not a safe target"),
    "PRECONDITION_REQUIRED": ErrorKind(428, "This server requires If-Match on changes"),
    "RATE_LIMITED": ErrorKind(429, "Too many requests; retry later"),
    "HEADERS_TOO_LARGE": ErrorKind(431, "The request line and headers are too large or too many"),
    "INTERNAL_ERROR": ErrorKind(500, "An unexpected error occurred"),
    "SERVICE_UNAVAILABLE": ErrorKind(503, "The service is temporarily unavailable; retry later"),
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


# --- database errors ---------------------------------------------------------------------------
# Constraint names carry the field at fault, by PostgreSQL's own naming convention, which the
# migrations follow: '<table>_<column>_check', '<table>_<column>_key' ('_live_key' for a unique
# index over live rows only). A new table or constraint needs no edit here.

def from_database_error(exc) -> ApiError | None:
    """Map a psycopg2 error to the client's error, or None when it is a server fault."""
    import psycopg2.errorcodes as codes

    orig = getattr(exc, "orig", exc)
    pgcode = getattr(orig, "pgcode", None)
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or ""
    if pgcode == codes.UNIQUE_VIOLATION:
        field = _column_in(constraint, getattr(diag, "table_name", None), ("_live_key", "_key"))
        what = f"{field} is already in use" if field else "A record with these values already exists"
        return ApiError("CONFLICT", what, field=field)
    if pgcode == codes.FOREIGN_KEY_VIOLATION:
        field = _fk_field(getattr(diag, "message_detail", "") or "")
        return ApiError("INVALID_REFERENCE", f"{field or 'reference'} does not name a record of this organization", field=field)
    if pgcode == codes.EXCLUSION_VIOLATION and constraint == "appointment_staff_no_overlap":
        return ApiError("CONFLICT", "The staff member already has an appointment at that time", field="date")
    if pgcode in (codes.CHECK_VIOLATION, codes.NOT_NULL_VIOLATION):
        field = getattr(diag, "column_name", None) or _column_in(constraint, getattr(diag, "table_name", None), ("_check",))
        return ApiError("VALIDATION_ERROR", f"{field or 'a value'} is out of range", field=field)
    if pgcode in (codes.NUMERIC_VALUE_OUT_OF_RANGE, codes.INVALID_TEXT_REPRESENTATION,
                  codes.STRING_DATA_RIGHT_TRUNCATION, codes.DATETIME_FIELD_OVERFLOW,
                  codes.INVALID_DATETIME_FORMAT, codes.UNTRANSLATABLE_CHARACTER,
                  codes.CHARACTER_NOT_IN_REPERTOIRE):
        return ApiError("VALIDATION_ERROR", "A value is out of the range the field accepts")
    if pgcode in (codes.LOCK_NOT_AVAILABLE, codes.SERIALIZATION_FAILURE, codes.DEADLOCK_DETECTED):
        return ApiError("CONFLICT", "The record is being changed by another request; retry")
    # READ_ONLY_SQL_TRANSACTION: the primary's URL names a server in recovery (a replica, or a
    # primary being failed over): a write cannot succeed there now, which is no client error.
    if pgcode in (codes.QUERY_CANCELED, codes.ADMIN_SHUTDOWN, codes.CANNOT_CONNECT_NOW,
                  codes.TOO_MANY_CONNECTIONS, codes.CRASH_SHUTDOWN, codes.READ_ONLY_SQL_TRANSACTION):
        return ApiError("SERVICE_UNAVAILABLE")
    return None


def _fk_field(detail: str) -> str | None:
    # 'Key (org_id, branch_id)=(..., ...) is not present in table "branch".'
    match = re.search(r"Key \((?:org_id, )?(\w+)\)", detail)
    return match.group(1) if match else None


def _column_in(constraint: str, table: str | None, suffixes: tuple[str, ...]) -> str | None:
    """'inventory_item_sku_live_key' on table 'inventory_item' -> 'sku'."""
    if not table or not constraint.startswith(table + "_"):
        return None
    for suffix in suffixes:
        if constraint.endswith(suffix):
            return constraint[len(table) + 1:-len(suffix)] or None
    return None
