"""The rules spec/openapi.yaml's description states for every value, each sent to the server:
the spec says no more and no less than the server enforces."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from config import ROOT
from tests.conftest import error_of

SPEC = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())
RULES = SPEC["info"]["description"]


def test_the_description_states_each_rule():
    for words in ("Unknown query parameters are refused", "NUL (U+0000)", "lone UTF-16 surrogate",
                  "0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "without a `Content-Type` is 415",
                  "limited in bytes, not characters", "MAX_BODY_BYTES", "ORG_CONTEXT_REQUIRED",
                  "MAX_HEADER_BYTES", "`data:image/` URI", "frame-ancestors 'none'"):
        assert words in RULES, words


def test_every_body_refuses_unknown_fields():
    for item in SPEC["paths"].values():
        for operation in item.values():
            for content in (operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}).values():
                name = content["schema"]["$ref"].split("/")[-1]
                assert SPEC["components"]["schemas"][name].get("additionalProperties") is False, name


def test_every_password_states_its_byte_limit():
    for name, schema in SPEC["components"]["schemas"].items():
        for field, rule in schema.get("properties", {}).items():
            if field.endswith("password"):
                assert rule["x-maxBytes"] == 72 and "bytes" in rule["description"] and rule["writeOnly"], (name, field)


@pytest.mark.parametrize("case", ["unknown_query", "unknown_body_field", "nul_in_body", "nul_in_query",
                                  "surrogate_in_body", "surrogate_in_login", "surrogate_in_nested_key",
                                  "year_zero_in_body", "year_zero_in_query", "year_10000_in_body",
                                  "year_10000_in_query", "multibyte_password", "bad_uuid", "no_content_type",
                                  "javascript_image", "svg_image"])
def test_each_stated_rule_is_enforced(client, org_a, case):
    headers = org_a.headers
    patient = {"branch_id": org_a.branch_id, "name": "Rule"}
    if case == "unknown_query":
        response, code, field = client.get("/patients?colour=blue", headers=headers), "VALIDATION_ERROR", "colour"
    elif case == "unknown_body_field":
        response, code, field = client.post("/patients", json={**patient, "colour": "blue"}, headers=headers), \
            "VALIDATION_ERROR", None
    elif case == "nul_in_body":
        # Was 400 MALFORMED_REQUEST without a field: the body is valid JSON, one value is not storable.
        response, code, field = client.post("/patients", json={**patient, "name": "a\x00b"}, headers=headers), \
            "VALIDATION_ERROR", "name"
    elif case == "surrogate_in_body":
        raw = b'{"branch_id": "%s", "name": "a\\ud800b"}' % org_a.branch_id.encode()
        response = client.post("/patients", content=raw, headers={**headers, "Content-Type": "application/json"})
        code, field = "VALIDATION_ERROR", "name"
    elif case == "surrogate_in_login":  # no token: it was a 500 before anything checked the caller
        raw = b'{"email": "a\\udfffb@example.com", "password": "correct horse battery"}'
        response = client.post("/auth/login", content=raw, headers={"Content-Type": "application/json"})
        code, field = "VALIDATION_ERROR", "email"
    elif case == "surrogate_in_nested_key":
        raw = b'{"type": "x", "data": {"dose": {"\\ud83d": 1}}, "patient_id": "%s"}' % org_a.branch_id.encode()
        response = client.post("/prescriptions", content=raw, headers={**headers, "Content-Type": "application/json"})
        code, field = "VALIDATION_ERROR", "data.dose.\ud83d"
    elif case == "year_10000_in_body":
        response = client.post("/loans", json={"lender": "Bank", "original_amount": 10,
                                               "start_date": "9999-12-31T23:30:00-01:00"}, headers=headers)
        code, field = "VALIDATION_ERROR", "start_date"
    elif case == "year_10000_in_query":
        response = client.get("/patients?updatedSince=9999-12-31T23:30:00-01:00", headers=headers)
        code, field = "VALIDATION_ERROR", None
    elif case == "no_content_type":
        response = client.post("/patients", content=json.dumps(patient).encode(), headers=headers)
        code, field = "UNSUPPORTED_MEDIA_TYPE", None
    elif case in ("javascript_image", "svg_image"):
        photo = "javascript:alert(1)" if case == "javascript_image" else "data:image/svg+xml,<svg onload=alert(1)>"
        response, code, field = client.post("/patients", json={**patient, "photo": photo}, headers=headers), \
            "VALIDATION_ERROR", "photo"
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
    assert response.status_code == (415 if case == "no_content_type" else 400), (case, response.text)
    error = error_of(response)
    assert error["code"] == code, case
    if field:
        assert error["field"] == field, case



def test_every_picture_a_client_may_render_is_an_image_url():
    """Each request field holding a picture a client will show takes only https, raster data URIs
    (and http in development): a `javascript:` or SVG one would run in the clinic's web app."""
    pictures = {(name, field) for name, schema in SPEC["components"]["schemas"].items()
                if name.endswith(("Create", "Update"))
                for field, rule in schema.get("properties", {}).items() if field in ("photo", "avatar", "image")}
    assert {("StaffCreate", "avatar"), ("StaffUpdate", "avatar"), ("PatientCreate", "photo")} <= pictures
    for name, field in sorted(pictures):
        assert SPEC["components"]["schemas"][name]["properties"][field].get("format") == "image-url", (name, field)


def test_every_pattern_means_the_same_to_python_and_to_ecmascript():
    r"""The server checks patterns with Python's re, clients and schemathesis with ECMA-262 rules.
    The class escapes differ on Unicode (Python's \s takes \x1c-\x1f and \x85, its \d and \w take
    every script's digits and letters): ``make fuzz`` sent "https://\x1d..." as matching \S and the
    server refused it. Patterns spell their classes out instead."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str) and re.search(r"\\[dDwWsSbB]", node["pattern"]):
                found.append((where, node["pattern"]))
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(SPEC, "#")
    assert found == []


def test_an_image_url_with_a_control_character_after_the_scheme_is_refused(client, org_a):
    refused = client.patch(f"/staff/{org_a.admin_id}", json={"avatar": "https://\x1dcdn.example/me.png"},
                           headers=org_a.headers)
    assert refused.status_code == 400 and error_of(refused)["field"] == "avatar", refused.text


def test_a_javascript_avatar_is_refused(client, org_a):
    refused = client.patch(f"/staff/{org_a.admin_id}", json={"avatar": "javascript:alert(document.cookie)"},
                           headers=org_a.headers)
    assert refused.status_code == 400 and error_of(refused)["field"] == "avatar", refused.text
    fine = client.patch(f"/staff/{org_a.admin_id}", json={"avatar": "https://cdn.example/me.png"}, headers=org_a.headers)
    assert fine.status_code == 200 and fine.json()["data"]["avatar"] == "https://cdn.example/me.png", fine.text


def test_the_calendar_ends_are_answered(client, org_a):
    """The last day and the last instant are values like any other; only beyond them is 400."""
    for path in ("/appointments?date=9999-12-31", "/appointments?date=0001-01-01",
                 "/patients?updatedSince=9999-12-31T23:59:59Z", "/patients?updatedSince=0001-01-01T00:00:00Z"):
        response = client.get(path, headers=org_a.headers)
        assert response.status_code == 200, (path, response.text)
    last = {"lender": "Bank", "original_amount": 10, "start_date": "9999-12-31T23:59:59.999999Z"}
    created = client.post("/loans", json=last, headers=org_a.headers)
    assert created.status_code == 201, created.text
    assert created.json()["data"]["start_date"].startswith("9999-12-31T23:59:59")


def test_image_fields_take_https_and_raster_data_and_http_only_in_development(client, org_a, app_with, settings):
    patient = {"branch_id": org_a.branch_id, "name": "Picture"}
    for photo in ("https://cdn.example/p.jpg", "data:image/png;base64,iVBORw0KGgo=", "http://localhost/p.png"):
        response = client.post("/patients", json={**patient, "photo": photo}, headers=org_a.headers)
        assert response.status_code == 201, (photo, response.text)
    production = app_with(env="production")
    with production.test_client() as http:
        refused = http.post("/patients", json={**patient, "photo": "http://cdn.example/p.jpg"}, headers=org_a.headers)
        assert refused.status_code == 400 and error_of(refused)["field"] == "photo", refused.text
        fine = http.post("/patients", json={**patient, "photo": "https://cdn.example/p.jpg"}, headers=org_a.headers)
        assert fine.status_code == 201, fine.text
