"""Request and response validation against the spec, speaking the API's error format.

Connexion's validators report errors as free text and rebuild the JSON-schema validator on every
request. These subclasses name the field at fault, turn undecodable bodies into 400s (connexion
issue 1860) and build each validator once per operation.
"""
from __future__ import annotations

import datetime
import json
import re
import uuid
import typing as t

from connexion.json_schema import Draft4RequestValidator, Draft4ResponseValidator, allow_nullable
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, JSONResponseBodyValidator
from connexion.validators.parameter import ParameterValidator
from connexion.datastructures import MediaTypeDict
from jsonschema import Draft4Validator, ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import extend

from middleware.errors import ApiError

@Draft4Validator.FORMAT_CHECKER.checks("uuid", raises=ValueError)
def _is_uuid(value) -> bool:
    # Draft 4 knows no uuid format; without this a malformed id would reach the database.
    if isinstance(value, str):
        uuid.UUID(value)
    return True


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})$")


@Draft4Validator.FORMAT_CHECKER.checks("date", raises=ValueError)
def _is_date(value) -> bool:
    # PostgreSQL would accept words such as 'yesterday'; the contract promises ISO-8601 only.
    if isinstance(value, str):
        if not _DATE.match(value):
            raise ValueError("expected YYYY-MM-DD")
        datetime.date.fromisoformat(value)
    return True


@Draft4Validator.FORMAT_CHECKER.checks("date-time", raises=ValueError)
def _is_date_time(value) -> bool:
    # RFC 3339: the offset is mandatory, so no timestamp is ever ambiguous.
    if isinstance(value, str):
        if not _DATE_TIME.match(value):
            raise ValueError("expected an RFC 3339 date-time with an offset")
        datetime.datetime.fromisoformat(value.replace("z", "Z"))
    return True


# OpenAPI 3.0 writes a nullable reference as {nullable: true, allOf: [$ref]}; let null through it.
_ResponseValidator = extend(
    Draft4ResponseValidator, {"allOf": allow_nullable(Draft4Validator.VALIDATORS["allOf"])}
)
_RequestValidator = extend(
    Draft4RequestValidator, {"allOf": allow_nullable(Draft4Validator.VALIDATORS["allOf"])}
)


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


# Connexion builds a body validator per request; the compiled schema is kept per operation here.
_compiled: dict[int, tuple[dict, t.Any]] = {}


def _compile(schema: dict, cls):
    key = id(schema)
    cached = _compiled.get(key)
    if cached is None or cached[0] is not schema:
        cached = (schema, cls(schema, format_checker=Draft4Validator.FORMAT_CHECKER))
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
            return json.loads(raw.decode(self._encoding))
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


class ResponseValidator(JSONResponseBodyValidator):
    @property
    def validator(self):
        return _compile(self._schema, _ResponseValidator)


class ParametersValidator(ParameterValidator):
    """Query, path and header validation that names the parameter at fault."""

    def validate_request(self, request):
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


VALIDATORS = {
    **VALIDATOR_MAP,
    "parameter": ParametersValidator,
    "body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": BodyValidator}),
    "response": MediaTypeDict({**VALIDATOR_MAP["response"], "*/*json": ResponseValidator}),
}
