"""Request and response validation against the spec, speaking the API's error format.

Connexion's validators report errors as free text and rebuild the JSON-schema validator on every
request. These subclasses name the field at fault, turn undecodable bodies into 400s (connexion
issue 1860) and build each validator once per operation.
"""
from __future__ import annotations

import datetime
from decimal import Decimal, InvalidOperation
import json
import re
import uuid
import typing as t

from connexion.json_schema import Draft4RequestValidator, Draft4ResponseValidator, allow_nullable
from connexion.middleware.request_validation import (
    RequestValidationAPI,
    RequestValidationMiddleware,
    RequestValidationOperation,
)
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, JSONResponseBodyValidator
from connexion.utils import is_null, is_nullable
from connexion.validators.parameter import ParameterValidator
from connexion.datastructures import MediaTypeDict
from jsonschema import Draft4Validator, FormatChecker, ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import extend

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


# OpenAPI 3.0 writes a nullable reference as {nullable: true, allOf: [$ref]}; let null through it.
_OVERRIDES = {
    "allOf": allow_nullable(Draft4Validator.VALIDATORS["allOf"]),
    "multipleOf": _exact_multiple_of,
}
_ResponseValidator = extend(Draft4ResponseValidator, _OVERRIDES)
_RequestValidator = extend(Draft4RequestValidator, _OVERRIDES)


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
    return f"{field}: {error.message}" if field else error.message


# Connexion builds a response validator per response (and _ValidatedOnce a body validator per
# uncommon Content-Type); each schema is compiled once, here.
_compiled: dict[int, tuple[dict, t.Any]] = {}


def _compile(schema: dict, cls):
    key = id(schema)
    cached = _compiled.get(key)
    if cached is None or cached[0] is not schema:
        cached = (schema, cls(schema, format_checker=FORMAT_CHECKER))
        _compiled[key] = cached
    return cached[1]


class BodyValidator(JSONRequestBodyValidator):
    """JSON body validation with named fields and 400s for undecodable bodies."""

    @property
    def _validator(self):
        return _compile(self._schema, _RequestValidator)

    async def _parse(self, stream, scope) -> t.Any:
        raw = b"".join([message async for message in stream])
        if not raw:
            return None
        try:
            text = raw.decode(self._encoding)
            body = json.loads(text)
            # PostgreSQL cannot store NUL in text or JSONB; the escape is the only way it can arrive.
            if "\\u0000" in text and _has_nul(body):
                raise ApiError("MALFORMED_REQUEST", "Text may not contain NUL (U+0000) characters")
            return body
        except (UnicodeDecodeError, LookupError) as exc:
            raise ApiError("MALFORMED_REQUEST", "The request body is not valid UTF-8") from exc
        except json.JSONDecodeError as exc:
            raise ApiError("MALFORMED_REQUEST", f"The request body is not valid JSON: {exc.msg}") from exc
        except RecursionError as exc:
            raise ApiError("MALFORMED_REQUEST", "The request body is nested too deeply") from exc


    def _validate(self, body: t.Any) -> None:
        if body is None:
            raise ApiError("VALIDATION_ERROR", "A JSON request body is required")
        error = best_match(self._validator.iter_errors(body))
        if error is not None:
            field = field_of(error)
            raise ApiError("VALIDATION_ERROR", _message(error, field), field=field)


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class ResponseValidator(JSONResponseBodyValidator):
    @property
    def validator(self):
        return _compile(self._schema, _ResponseValidator)


class ParametersValidator(ParameterValidator):
    """Query, path and header validation that names the parameter at fault.

    connexion deep-copies each parameter's schema and builds a validator for it on every request;
    here each schema is compiled once.
    """

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
        schema = param.get("schema", param)
        error = best_match(_compile(schema, _RequestValidator).iter_errors(value))
        return error.message if error is not None else None

    def validate_request(self, request):
        for name, value in request.query_params.items():
            if "\x00" in str(value):
                raise ApiError("VALIDATION_ERROR", f"{name} may not contain NUL characters", field=name)
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
                    name = param["name"]
                    raise ApiError("VALIDATION_ERROR", f"{name}: {_first_line(problem)}", field=name)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid value"


_BODY_VALIDATORS_KEPT = 8


class _ValidatedOnce(RequestValidationOperation):
    """connexion's request validation, with its validators built once per operation.

    connexion's ``__call__`` builds two URI parsers, a parameter validator and a body validator
    on every request, from the same operation each time. This is its ``__call__`` (connexion
    3.3.0) with those kept: the parameter validator, and a body validator per (media type,
    charset), the only request-dependent inputs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        operation = self._operation
        self._parameters = self._validator_map["parameter"](
            operation.parameters,
            uri_parser=operation._uri_parser_class(operation.parameters, operation.body_definition()),
            strict_validation=self.strict_validation,
            security_query_params=self.security_query_params,
        )
        self._bodies: dict[tuple[str, str], t.Any] = {}

    def _body_validator(self, mime_type: str, encoding: str):
        key = (mime_type, encoding)
        if key in self._bodies:
            return self._bodies[key]
        operation = self._operation
        schema = operation.body_schema(mime_type)
        validator_cls = self._validator_map["body"].get(mime_type) if schema else None
        validator = validator_cls and validator_cls(
            schema=schema,
            required=operation.request_body.get("required", False),
            nullable=is_nullable(operation.body_definition(mime_type)),
            encoding=encoding,
            strict_validation=self.strict_validation,
            uri_parser=operation.uri_parser_class(operation.parameters, operation.body_definition()),
        )
        # Both parts of the key come from the client's Content-Type (a GET accepts any): a few
        # are kept, the rest built per request as connexion does, so no client can grow this.
        if len(self._bodies) < _BODY_VALIDATORS_KEPT:
            self._bodies[key] = validator
        return validator

    async def __call__(self, scope, receive, send):
        self._parameters.validate(scope)
        mime_type, encoding = self.extract_content_type(scope["headers"])
        self.validate_mime_type(mime_type)
        body = self._body_validator(mime_type, encoding)
        if body is not None:
            receive, scope = await body.wrap_receive(receive, scope=scope)
        await self.next_app(scope, receive, send)


class _ValidatedOnceAPI(RequestValidationAPI):
    def make_operation(self, operation):
        return _ValidatedOnce(self.next_app, operation=operation, strict_validation=self.strict_validation,
                              validator_map=self.validator_map)


class RequestValidation(RequestValidationMiddleware):
    api_cls = _ValidatedOnceAPI


VALIDATORS = {
    **VALIDATOR_MAP,
    "parameter": ParametersValidator,
    "body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": BodyValidator}),
    "response": MediaTypeDict({**VALIDATOR_MAP["response"], "*/*json": ResponseValidator}),
}
