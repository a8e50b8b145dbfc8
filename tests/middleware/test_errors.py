"""Every layer answers in the one error format, with the right status and code."""
import uuid

import yaml

from config import ROOT
from errors import ERRORS
from tests.conftest import error_of


def test_registry_and_spec_list_the_same_codes():
    spec = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())
    assert spec["components"]["schemas"]["ErrorCode"]["enum"] == list(ERRORS)


def test_unknown_route_is_404(client, org_a):
    response = client.get("/no-such-thing", headers=org_a.headers)
    assert response.status_code == 404 and error_of(response)["code"] == "NOT_FOUND"


def test_wrong_method_is_405_with_the_full_allow_list(client, org_a):
    response = client.put(f"/patients/{uuid.uuid4()}", headers=org_a.headers)
    assert response.status_code == 405 and error_of(response)["code"] == "METHOD_NOT_ALLOWED"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}
    collection = client.delete("/patients", headers=org_a.headers)
    assert set(collection.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}


def test_wrong_content_type_is_415(client, org_a):
    response = client.post("/patients", content=b"name=x", headers={**org_a.headers, "Content-Type": "text/plain"})
    assert response.status_code == 415 and error_of(response)["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_malformed_json_and_invalid_utf8_are_400(client, org_a):
    for raw in (b'{"name": ', b"\xff\xfe\xfd", b"[1, 2", b'{"a": NaN'):
        response = client.post("/patients", content=raw,
                               headers={**org_a.headers, "Content-Type": "application/json"})
        assert response.status_code == 400, raw
        assert error_of(response)["code"] in ("MALFORMED_REQUEST", "VALIDATION_ERROR"), raw


def test_missing_body_is_400(client, org_a):
    response = client.post("/patients", headers={**org_a.headers, "Content-Type": "application/json"})
    assert response.status_code == 400 and error_of(response)["code"] == "VALIDATION_ERROR"


def test_body_over_the_limit_is_413_before_it_is_read(client, org_a, settings):
    big = b'{"name": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    response = client.post("/patients", content=big, headers={**org_a.headers, "Content-Type": "application/json"})
    assert response.status_code == 413 and error_of(response)["code"] == "PAYLOAD_TOO_LARGE"


def test_query_and_path_parameters_name_the_field(client, org_a):
    for url, field in [("/patients?page=0", "page"), ("/patients?pageSize=101", "pageSize"),
                       ("/patients?unknown=1", "unknown"), ("/patients/not-a-uuid", "id"),
                       ("/patients?branchId=zzz", "branchId")]:
        response = client.get(url, headers=org_a.headers)
        assert response.status_code == 400, url
        assert error_of(response)["field"] == field, url


def test_unexpected_errors_are_500_without_internals(client, org_a, monkeypatch):
    from models import crud

    def explode(*args, **kwargs):
        raise RuntimeError("connection to host db.internal:5432 failed: SELECT * FROM patient")

    monkeypatch.setattr(crud, "list_rows", explode)
    response = client.get("/patients", headers=org_a.headers)
    assert response.status_code == 500
    error = error_of(response)
    assert error == {"code": "INTERNAL_ERROR", "message": ERRORS["INTERNAL_ERROR"].message}
    assert "SELECT" not in response.text and "db.internal" not in response.text


def test_every_response_carries_a_request_id_and_no_store(client, org_a):
    mine = client.get("/patients", headers={**org_a.headers, "X-Request-ID": "trace-123"})
    assert mine.headers["X-Request-ID"] == "trace-123"
    generated = client.get("/no-such-thing")
    assert len(generated.headers["X-Request-ID"]) == 32
    hostile = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["X-Request-ID"] != "bad id\twith spaces"
    assert mine.headers["Cache-Control"] == "no-store"
    assert mine.headers["X-Content-Type-Options"] == "nosniff"
    for response in (mine, generated, hostile, client.get("/openapi.json"), client.get("/ui/")):
        assert response.headers["X-Frame-Options"] == "DENY", response.url
        assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'", response.url


def test_paths_with_control_characters_are_404_not_500(client, org_a):
    for path in ("/patients/%0A", "/patients/abc%0D%0Adef", "/patients%00"):
        response = client.get(path, headers=org_a.headers)
        assert response.status_code == 404, path
        assert error_of(response)["code"] == "NOT_FOUND"


def test_instants_before_year_one_in_utc_are_400(client, org_a):
    body = {"original_amount": 10, "lender": "Bank", "start_date": "0001-01-01T00:00:00+01:00"}
    refused = client.post("/loans", json=body, headers=org_a.headers)
    assert refused.status_code == 400 and error_of(refused)["field"] == "start_date"
    fine = client.post("/loans", json={**body, "start_date": "0001-01-01T02:00:00+01:00"}, headers=org_a.headers)
    assert fine.status_code == 201
    assert client.get(f"/loans/{fine.json()['data']['id']}", headers=org_a.headers).json()["data"]["start_date"].startswith("0001-01-01T01:00:00")
