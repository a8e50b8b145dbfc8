"""The contract's validation rules, speaking the API's error format.

JSON Schema as the spec writes it (Draft 4 with OpenAPI's nullable), plus what the contract adds:
uuid, ISO dates and RFC 3339 instants with an offset, exact decimal ``multipleOf`` for money, no
NUL characters. Each schema is compiled once. Connexion calls these through the validator classes
in ``middleware/adapter.py``; errors name the field at fault.
"""
from __future__ import annotations

import datetime
from decimal import Decimal, InvalidOperation
import json
import re
import uuid
import typing as t

from jsonschema import Draft4Validator, FormatChecker, ValidationError
from jsonschema.exceptions import best_match

import config
from errors import ApiError
from models.instants import parse_instant

# Draft 4's format checks plus the contract's own, in a checker of our own: jsonschema's class-level
# one is shared by every user of the library in the process.
FORMAT_CHECKER = FormatChecker(formats=())
FORMAT_CHECKER.checkers = dict(Draft4Validator.FORMAT_CHECKER.checkers)


@FORMAT_CHECKER.checks("uuid", raises=ValueError)
def _is_uuid(value) -> bool:
    # Draft 4 knows no uuid format; without this a malformed id would reach the database.
    if isinstance(value, str):
        uuid.UUID(value)
    return True


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


@FORMAT_CHECKER.checks("date", raises=ValueError)
def _is_date(value) -> bool:
    # PostgreSQL would accept words such as 'yesterday'; the contract promises ISO-8601 only.
    if isinstance(value, str):
        if not _DATE.fullmatch(value):
            raise ValueError("expected YYYY-MM-DD")
        datetime.date.fromisoformat(value)
    return True


@FORMAT_CHECKER.checks("date-time", raises=ValueError)
def _is_date_time(value) -> bool:
    # RFC 3339: the offset is mandatory, so no timestamp is ever ambiguous.
    if isinstance(value, str):
        if not _DATE_TIME.fullmatch(value):
            raise ValueError("expected an RFC 3339 date-time with an offset")
        try:
            parse_instant(value)
        except ApiError as exc:
            raise ValueError(exc.message) from exc
    return True


@FORMAT_CHECKER.checks("image-url", raises=ValueError)
def _is_image_url(value) -> bool:
    # The spec's pattern admits https:, http: and raster data: URIs; plain http: is only for
    # development, where images come from local servers. Production pages load over https, and an
    # http: image there is mixed content that a network attacker can swap.
    if isinstance(value, str) and value[:5].lower() == "http:" and not config.current().is_development:
        raise ValueError("an image URL must use https: (http: is accepted in development only)")
    return True


def _exact_multiple_of(validator, step, instance, schema):
    """multipleOf in decimal arithmetic: jsonschema divides floats, so 0.29 is 'not a multiple' of
    0.01 there. Money is declared ``multipleOf: 0.01`` and must be checked exactly."""
    if not validator.is_type(instance, "number") or isinstance(instance, bool):
        return
    try:
        value = Decimal(repr(instance)) if isinstance(instance, float) else Decimal(instance)
        fits = value % Decimal(repr(step)) == 0
    except (InvalidOperation, ValueError):
        fits = False
    if not fits:
        yield ValidationError(f"{instance!r} is not a multiple of {step}")


# What the contract checks beyond JSON Schema's own keywords (connexion's OpenAPI dialect is added
# where the validators are built, in middleware/adapter.py).
KEYWORDS = {"multipleOf": _exact_multiple_of}


def field_of(error: ValidationError) -> str | None:
    """The dotted path of the property at fault; for a missing or unexpected one, its name."""
    path = [str(part) for part in error.absolute_path]
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in instance]
        path += missing[:1]
    elif error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extras = sorted(name for name in instance if name not in known)
        path += extras[:1]
    return ".".join(path) or None


def _message(error: ValidationError, field: str | None) -> str:
    if error.validator == "required" and field:
        return f"{field} is required"
    if error.validator == "additionalProperties" and field:
        return f"{field} is not a known property"
    if error.schema.get("writeOnly") is True:  # a password: say the rule, never the value
        return f"{field or 'the value'}: {_SECRET_RULES.get(error.validator, 'is not valid')}".format(error.validator_value)
    return f"{field}: {error.message}" if field else error.message


_SECRET_RULES = {"minLength": "must be at least {} characters", "maxLength": "must be at most {} characters",
                 "type": "must be a {}", "pattern": "does not match its pattern"}


def _unstorable(value, path: tuple = ()) -> tuple | None:
    """The path of the first string (value or key) PostgreSQL cannot store: one holding NUL, or a
    lone UTF-16 surrogate (``"\\ud800"``), which no UTF-8 text can carry."""
    if isinstance(value, str):
        return path if "\x00" in value or _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unstorable(key, (*path, key)) or _unstorable(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable(item, (*path, index))
            if found is not None:
                return found
    return None


_SURROGATE = re.compile("[\\ud800-\\udfff]")


def parse_json(raw: bytes, encoding: str) -> t.Any:
    """A request body as JSON; None when empty; 400 MALFORMED_REQUEST when it cannot be read."""
    if not raw:
        return None
    try:
        text = raw.decode(encoding)
        body = json.loads(text)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ApiError("MALFORMED_REQUEST", "The request body is not valid UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ApiError("MALFORMED_REQUEST", f"The request body is not valid JSON: {exc.msg}") from exc
    except RecursionError as exc:
        raise ApiError("MALFORMED_REQUEST", "The request body is nested too deeply") from exc
    # NUL and lone surrogates are valid JSON but cannot be stored; an escape (\u0000, \ud800) is
    # the only way either can arrive, so bodies without one are not walked.
    if "\\u" in text:
        path = _unstorable(body)
        if path is not None:
            field = ".".join(str(part) for part in path) or None
            raise ApiError("VALIDATION_ERROR", f"{field or 'the body'}: text may not contain NUL (U+0000) "
                           "or a lone UTF-16 surrogate", field=field)
    return body


def check_body(validator, body: t.Any) -> None:
    """400 VALIDATION_ERROR naming the field when ``body`` breaks the schema of ``validator``."""
    if body is None:
        raise ApiError("VALIDATION_ERROR", "A JSON request body is required")
    error = best_match(validator.iter_errors(body))
    if error is not None:
        field = field_of(error)
        raise ApiError("VALIDATION_ERROR", _message(error, field), field=field)


def parameter_problem(validator, value: t.Any) -> str | None:
    """What is wrong with one parameter's value, or None.

    A value once accepted by a schema is accepted again without validating it: a verdict depends
    on the schema and the value alone, and the same few values come back on every request (a page
    number, a page size, an embed list), each costing jsonschema's descent through the schema."""
    key = _verdict_key(validator, value)
    if key is not None and _accepted.get(key) is validator:
        return None
    error = best_match(validator.iter_errors(value))
    if error is not None:
        return error.message
    if key is not None:
        if len(_accepted) >= _ACCEPTED_KEPT:
            _accepted.clear()
        _accepted[key] = validator
    return None


# (validator's id, value's type, value) -> the validator, for values it accepted; bounded, since
# clients choose the values. The validator is held so that its id is never another's.
_accepted: dict[tuple, t.Any] = {}
_ACCEPTED_KEPT = 4096
_SCALARS = (str, int, float, bool)


def _verdict_key(validator, value: t.Any) -> tuple | None:
    # The type is part of the key: True == 1 and 1 == 1.0 are equal keys, not equal instances.
    if type(value) in _SCALARS:
        return id(validator), type(value), value
    if type(value) is list and all(type(item) in _SCALARS for item in value):
        return id(validator), list, tuple((type(item), item) for item in value)
    return None


def refuse_nul_parameters(query_params) -> None:
    for name, value in query_params.items():
        if "\x00" in str(value):
            raise ApiError("VALIDATION_ERROR", f"{name} may not contain NUL characters", field=name)


def refuse_parameter(name: str, problem: str) -> None:
    text = problem.strip()
    raise ApiError("VALIDATION_ERROR", f"{name}: {text.splitlines()[0] if text else 'invalid value'}", field=name)
