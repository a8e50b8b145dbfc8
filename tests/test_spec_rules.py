"""The rules spec/openapi.yaml's description states for every value, each sent to the server:
the spec says no more and no less than the server enforces."""
from __future__ import annotations

import pytest
import yaml

from config import ROOT
from tests.conftest import error_of

SPEC = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())
RULES = SPEC["info"]["description"]


def test_the_description_states_each_rule():
    for words in ("Unknown query parameters are refused", "NUL (U+0000)", "0001-01-01T00:30:00+01:00",
                  "limited in bytes, not characters", "MAX_BODY_BYTES", "ORG_CONTEXT_REQUIRED"):
        assert words in RULES, words


def test_every_body_refuses_unknown_fields():
    for item in SPEC["paths"].values():
        for operation in item.values():
            for content in (operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}).values():
                name = content["schema"]["$ref"].split("/")[-1]
                assert SPEC["components"]["schemas"][name].get("additionalProperties") is False, name


def test_every_password_states_its_byte_limit():
    for name, schema in SPEC["components"]["schemas"].items():
        password = schema.get("properties", {}).get("password")
        if password:
            assert password["x-maxBytes"] == 72 and "bytes" in password["description"], name


@pytest.mark.parametrize("case", ["unknown_query", "unknown_body_field", "nul_in_body", "nul_in_query",
                                  "year_zero_in_body", "year_zero_in_query", "multibyte_password", "bad_uuid"])
def test_each_stated_rule_is_enforced(client, org_a, case):
    headers = org_a.headers
    patient = {"branch_id": org_a.branch_id, "name": "Rule"}
    if case == "unknown_query":
        response, code, field = client.get("/patients?colour=blue", headers=headers), "VALIDATION_ERROR", "colour"
    elif case == "unknown_body_field":
        response, code, field = client.post("/patients", json={**patient, "colour": "blue"}, headers=headers), \
            "VALIDATION_ERROR", None
    elif case == "nul_in_body":
        response, code, field = client.post("/patients", json={**patient, "name": "a\x00b"}, headers=headers), \
            "MALFORMED_REQUEST", None
    elif case == "nul_in_query":
        response, code, field = client.get("/patients?search=a%00b", headers=headers), "VALIDATION_ERROR", "search"
    elif case == "year_zero_in_body":
        response = client.post("/loans", json={"lender": "Bank", "original_amount": 10,
                                               "start_date": "0001-01-01T00:30:00+01:00"}, headers=headers)
        code, field = "VALIDATION_ERROR", None
    elif case == "year_zero_in_query":
        response = client.get("/patients?updatedSince=0001-01-01T00:30:00%2B01:00", headers=headers)
        code, field = "VALIDATION_ERROR", None
    elif case == "multibyte_password":
        response = client.post("/auth/login", json={"email": org_a.admin_email, "password": "é" * 40})
        code, field = "VALIDATION_ERROR", "password"
    else:
        response, code, field = client.get("/patients/not-a-uuid", headers=headers), "VALIDATION_ERROR", "id"
    assert response.status_code == 400, (case, response.text)
    error = error_of(response)
    assert error["code"] == code, case
    if field:
        assert error["field"] == field, case

