"""The contract's validation rules, speaking the API's error format.

JSON Schema as the spec writes it (Draft 4 with OpenAPI's nullable), plus what the contract adds:
uuid, ISO dates and RFC 3339 instants with an offset, exact decimal ``multipleOf`` for money, no
NUL characters. Each schema is compiled once. Connexion calls these through the validator classes
in ``middleware/adapter.py``; errors name the field at fault.

A request's verdict comes from jsonschema_rs (``RequestRules``): it accepts valid input in Rust,
with the contract's formats, exact ``multipleOf`` and Python's own patterns called back. jsonschema
stays the judge of everything the quick check refuses, and says what is wrong with it, so
an error answer is the same as before, word for word.
"""
from __future__ import annotations

import datetime
import functools
from decimal import Decimal, InvalidOperation
import json
import re
import uuid
import typing as t

import jsonschema_rs
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


def _is_exact_multiple(instance, step) -> bool:
    if not isinstance(instance, (int, float)) or isinstance(instance, bool):
        return True
    try:
        value = Decimal(repr(instance)) if isinstance(instance, float) else Decimal(instance)
        return value % Decimal(repr(step)) == 0
    except (InvalidOperation, ValueError):
        return False


def _exact_multiple_of(validator, step, instance, schema):
    """multipleOf in decimal arithmetic: jsonschema divides floats, so 0.29 is 'not a multiple' of
    0.01 there. Money is declared ``multipleOf: 0.01`` and must be checked exactly."""
    if not _is_exact_multiple(instance, step):
        yield ValidationError(f"{instance!r} is not a multiple of {step}")


# What the contract checks beyond JSON Schema's own keywords (connexion's OpenAPI dialect is added
# where the validators are built, in middleware/adapter.py).
KEYWORDS = {"multipleOf": _exact_multiple_of}


class _QuickMultipleOf:
    """jsonschema_rs's ``multipleOf``, replaced by the exact decimal rule above."""

    def __init__(self, _parent_schema, step, _schema_path):
        self.step = step

    def validate(self, instance) -> None:
        if not _is_exact_multiple(instance, self.step):
            raise ValueError(f"{instance!r} is not a multiple of {self.step}")


class _QuickPattern:
    """jsonschema_rs's ``pattern``, replaced by Python's ``re.search`` as jsonschema applies it:
    the two regex dialects differ (``$`` before a final newline, what ``\\d`` and ``\\w`` match)."""

    def __init__(self, _parent_schema, pattern, _schema_path):
        self.regex = re.compile(pattern)

    def validate(self, instance) -> None:
        if isinstance(instance, str) and not self.regex.search(instance):
            raise ValueError(f"{instance!r} does not match {self.regex.pattern!r}")


# Draft 4's validation keywords. Everything else is left out of the quick check's schema: the
# annotations, and the ``components`` connexion writes into each body schema it hands over (which
# holds that schema again).
_SUBSCHEMA = frozenset({"items", "additionalItems", "additionalProperties", "not", "allOf", "anyOf", "oneOf"})
_SUBSCHEMAS_BY_NAME = frozenset({"properties", "patternProperties", "dependencies"})
_VALUES = frozenset({"type", "enum", "format", "required", "minProperties", "maxProperties", "minItems",
                     "maxItems", "uniqueItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                     "multipleOf", "minLength", "maxLength", "pattern"})


class NotPlain(ValueError):
    """A schema the quick check does not take: a reference left unresolved, or a cycle."""


def plain_json_schema(schema, _within: tuple = ()):
    """A schema in connexion's OpenAPI dialect as plain Draft 4: its validation keywords only, and
    where ``nullable`` lets null through the ``type``, ``enum`` and ``allOf`` of its schema
    (connexion's rules and ``middleware/adapter.py``'s), null written into them. The schema
    itself is left as it is."""
    if isinstance(schema, list):
        return [plain_json_schema(item, _within) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema or id(schema) in _within:
        raise NotPlain("a reference or a cycle")
    within = (*_within, id(schema))
    plain = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA:
            plain[key] = plain_json_schema(value, within)
        elif key in _SUBSCHEMAS_BY_NAME and isinstance(value, dict):
            plain[key] = {name: plain_json_schema(item, within) for name, item in value.items()}
        elif key in _VALUES:
            plain[key] = value
    if schema.get("x-nullable") is True or schema.get("nullable"):
        if "type" in plain:
            types = plain["type"] if isinstance(plain["type"], list) else [plain["type"]]
            plain["type"] = types if "null" in types else [*types, "null"]
        if isinstance(plain.get("enum"), list) and None not in plain["enum"]:
            plain["enum"] = [*plain["enum"], None]
        if isinstance(plain.get("allOf"), list):
            plain["allOf"] = [{"anyOf": [{"type": "null"}, part]} for part in plain["allOf"]]
    return plain


def _format_names(schema, found: set) -> set:
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            found.add(schema["format"])
        for value in schema.values():
            _format_names(value, found)
    elif isinstance(schema, list):
        for item in schema:
            _format_names(item, found)
    return found


def _quick_validator(schema):
    """jsonschema_rs for ``schema``, every format the schema names checked by FORMAT_CHECKER (the
    same functions jsonschema calls); None when it cannot take the schema."""
    try:
        plain = plain_json_schema(schema)
        formats = {name: functools.partial(_conforms, name) for name in _format_names(plain, set())}
        return jsonschema_rs.Draft4Validator(plain, formats=formats, validate_formats=True,
                                             keywords={"multipleOf": _QuickMultipleOf, "pattern": _QuickPattern})
    except (ValueError, TypeError, re.error):
        return None


def _conforms(name: str, value) -> bool:
    return FORMAT_CHECKER.conforms(value, name)


class RequestRules:
    """A request schema's validator (``iter_errors``, as jsonschema's): what jsonschema_rs finds
    valid has no errors; anything else is jsonschema's to judge and to explain."""

    def __init__(self, validator):
        self.validator = validator
        self.quick = _quick_validator(validator.schema)

    def iter_errors(self, instance) -> t.Iterator[ValidationError]:
        if self.quick is not None:
            try:
                if self.quick.is_valid(instance):
                    return iter(())
            except (ValueError, TypeError, OverflowError):  # a value Rust cannot hold: jsonschema judges it
                pass
        return self.validator.iter_errors(instance)


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
