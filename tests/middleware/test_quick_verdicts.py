"""jsonschema_rs gives the verdict on request input (validation.RequestRules), jsonschema stays the
judge of what it refuses. The fast verdict must never accept what jsonschema refuses, on any
request schema of the contract, and it must accept the valid input it is there for.

The values below are the ones where the two libraries could differ: numbers at and past the edge
of a 64-bit integer or a double, floats that divide inexactly, NaN and infinity (Python's json
reads them), strings ending in a newline or holding non-ASCII digits (regex dialects), astral
characters (lengths), dates and instants that look right and are not, booleans for numbers."""
from __future__ import annotations

import itertools
import uuid

import pytest
import yaml
from connexion.json_schema import resolve_refs

from config import ROOT
from middleware import adapter, validation

_ID = str(uuid.UUID(int=0x94FBF2F7E38D893B6D5CD3F9D720F526))
_ODD_VALUES = [
    None, True, False, 0, 1, -1, 7, 1.0, -0.0, 0.5, 0.29, 0.1 + 0.2, 12.345, 1e-7, 1e308, float("inf"),
    float("-inf"), float("nan"), 2**53 + 1, 2**63, 2**64, 10**30, -(10**30),
    "", "a", "a\n", "\ufeff", "\n", "٣", "12\n", "x" * 101, "\U0001F600" * 3, "tab\there",
    "2024-02-30", "2024-01-01", "2024-1-1", "2024-01-01\n", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00",
    "2024-01-01T25:00:00+00:00", "2024-01-01t10:00:00.5-05:00", _ID, _ID.upper(), _ID + "\n", "not-a-uuid",
    "a@b", "@", "nobody", "https://clinic.example/p.png", "http://clinic.example/p.png",
    "data:image/png;base64,AA==", "data:text/html,x", "javascript:alert(1)", "active", "ACTIVE",
    [], [1], ["a"], [_ID, _ID], ["patient"], {}, {"a": 1},
]


def _request_schemas() -> list[tuple[str, dict]]:
    """(where, schema) for every JSON body and parameter connexion validates, refs resolved."""
    spec = resolve_refs(yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text()))
    found = []
    for path, item in spec["paths"].items():
        shared = item.get("parameters", [])
        for method, operation in item.items():
            if method == "parameters":
                continue
            for parameter in [*shared, *operation.get("parameters", [])]:
                found.append((f"{method} {path} {parameter['in']} {parameter['name']}", parameter.get("schema", parameter)))
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                if "json" in media and "schema" in content:
                    found.append((f"{method} {path} body", content["schema"]))
    return found


SCHEMAS = _request_schemas()
# Rules the contract could write where the libraries part ways: jsonschema_rs divides floats for
# multipleOf (it accepts 10**30 as a multiple of 0.01, which the exact rule cannot tell) and its
# regex dialect lets U+FEFF match \s. Only the callbacks to Python keep these exact.
AT_THE_EDGE = [("a money amount with no maximum", {"type": "number", "multipleOf": 0.01}),
               ("a pattern of white space", {"type": "string", "pattern": "^\\s+$"})]
# The image-url format reads the settings (http: images only in development).
pytestmark = pytest.mark.usefixtures("app")


def _variants(schema: dict) -> list:
    """The odd values alone, then set into every property of the schema's example (or of an
    empty object), one at a time, and with each property left out."""
    values = list(_ODD_VALUES)
    properties = schema.get("properties") or {}
    if properties:
        base = dict(schema.get("example") or {})
        values.append(base)
        for name, value in itertools.product(properties, _ODD_VALUES):
            values.append({**base, name: value})
            values.append({name: value})
        values += [{key: item for key, item in base.items() if key != name} for name in base]
        values.append({**base, "unknown_field": 1})
    if schema.get("type") == "array":
        values += [[value] for value in _ODD_VALUES]
    return values


def _jsonschema_accepts(rules: validation.RequestRules, value) -> bool:
    return next(iter(rules.validator.iter_errors(value)), None) is None


def _quick_accepts(rules: validation.RequestRules, value) -> bool | None:
    try:
        return rules.quick.is_valid(value)
    except (ValueError, TypeError, OverflowError):
        return None


def test_every_request_schema_has_a_quick_verdict():
    refused = [where for where, schema in SCHEMAS if adapter.compiled(schema).quick is None]
    assert SCHEMAS and not refused


@pytest.mark.parametrize("where, schema", SCHEMAS + AT_THE_EDGE, ids=[where for where, _ in SCHEMAS + AT_THE_EDGE])
def test_the_quick_verdict_never_accepts_what_jsonschema_refuses(where, schema):
    rules = adapter.compiled(schema)
    for value in _variants(schema):
        if _quick_accepts(rules, value):
            assert _jsonschema_accepts(rules, value), (where, value)


def test_the_quick_verdict_accepts_what_it_is_there_for():
    """Every example of a request body in the contract, and the values a client sends every day,
    are accepted without jsonschema; where the two disagree on the odd values, only in the safe
    direction (jsonschema then accepts, more slowly)."""
    bodies = [(where, schema) for where, schema in SCHEMAS if where.endswith(" body") and schema.get("example")]
    assert bodies
    for where, schema in bodies:
        assert _quick_accepts(adapter.compiled(schema), schema["example"]), where
    page = adapter.compiled({"type": "integer", "minimum": 1, "maximum": 1000})
    money = adapter.compiled({"type": "number", "multipleOf": 0.01, "nullable": True})
    photo = adapter.compiled({"type": "string", "pattern": "^(https?://|data:image/png[;,])", "nullable": True})
    assert _quick_accepts(adapter.compiled({"type": "string", "format": "uuid"}), _ID)
    assert _quick_accepts(page, 3) and not _quick_accepts(page, 0) and not _quick_accepts(page, True)
    assert _quick_accepts(money, 0.29) and _quick_accepts(money, None) and not _quick_accepts(money, 0.291)
    assert _quick_accepts(photo, "https://x") and _quick_accepts(photo, None) and not _quick_accepts(photo, "ftp:")


def test_nullable_lets_null_through_type_enum_and_all_of_only():
    schema = {"nullable": True, "description": "a note", "allOf": [{"type": "object", "required": ["a"]}]}
    assert validation.plain_json_schema(schema) == {
        "allOf": [{"anyOf": [{"type": "null"}, {"type": "object", "required": ["a"]}]}]}
    status = adapter.compiled({"type": "string", "enum": ["active", "inactive"], "nullable": True})
    for value in (None, "active", "gone", 1):
        assert _quick_accepts(status, value) == _jsonschema_accepts(status, value), value
    not_nullable = adapter.compiled({"type": "string", "enum": ["active"]})
    assert not _quick_accepts(not_nullable, None) and not _jsonschema_accepts(not_nullable, None)


def test_what_connexion_adds_to_a_body_schema_is_left_out():
    """connexion writes the spec's ``components`` into each body schema, and they hold that schema
    again: the quick check keeps the validation keywords and refuses a cycle or a reference."""
    body = {"type": "object", "properties": {"name": {"type": "string"}}}
    body["components"] = {"schemas": {"Body": body}}
    assert validation.plain_json_schema(body) == {"type": "object", "properties": {"name": {"type": "string"}}}
    looped = {"type": "object", "properties": {}}
    looped["properties"]["again"] = looped
    assert adapter.compiled(looped).quick is None
    assert adapter.compiled({"allOf": [{"$ref": "#/components/schemas/Patient"}]}).quick is None


def test_the_schemas_connexion_hands_over_get_a_quick_verdict(client, org_a, monkeypatch):
    monkeypatch.setattr(adapter, "_compiled", {})
    created = client.post("/patients", json={"branch_id": org_a.branch_id, "name": "Amy"}, headers=org_a.headers)
    assert created.status_code == 201
    assert client.get(f"/patients/{created.json()['data']['id']}", headers=org_a.headers).status_code == 200
    served = [rules for _, rules in adapter._compiled.values() if isinstance(rules, validation.RequestRules)]
    assert len(served) >= 2 and all(rules.quick is not None for rules in served)


def test_an_error_answer_is_still_jsonschemas(client, org_a):
    """What the quick check refuses, jsonschema explains: the field and the message."""
    answer = client.post("/patients", json={"branch_id": "not-a-uuid", "name": "Amy"}, headers=org_a.headers)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["field"] == "branch_id" and "uuid" in error["message"]
