"""Hostile HTTP against a real `clinic-api serve` (gunicorn, uvicorn worker, the serving layer of
middleware/server.py), spoken over raw sockets: every request, whatever its method, framing or
headers, is answered with the error envelope and a 4xx, or cut off when it never ends."""
from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from tests.conftest import PASSWORD, sign_token, spawn_server
from tests.rawhttp import Reader, chunked, connect, exchange, request_bytes, send_slowly

HEADER_TIMEOUT_S = 2
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def served(database_url):
    process, base = spawn_server(database_url, production=True, APP_ENV="production", WEB_CONCURRENCY="1",
                                 HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                                 WEBHOOK_WORKER="false")
    yield base
    process.terminate()
    process.wait(timeout=40)


def _json_request(method, path, body: dict, headers=None, content_type="application/json") -> bytes:
    headers = dict(headers or {})
    if content_type:
        headers["Content-Type"] = content_type
    return request_bytes(method, path, headers, json.dumps(body).encode())


# --- point 1: framing and headers ---------------------------------------------------------------

def test_one_huge_header_is_431_in_the_envelope_and_the_connection_closes(served):
    with connect(served) as sock:
        sock.sendall(request_bytes("GET", "/health", {"X-Big": "a" * (64 * 1024)}))
        reader = Reader(sock)
        answer = reader.answer()
        assert answer.status == 431 and answer.error["code"] == "HEADERS_TOO_LARGE"
        assert answer.headers["connection"] == "close"
        assert answer.headers["x-frame-options"] == "DENY"
        assert reader.closed(within=5)


def test_too_many_headers_are_431(served):
    headers = [(f"X-H{i}", "1") for i in range(500)]
    answer = exchange(served, request_bytes("GET", "/health", headers))
    assert answer.status == 431 and answer.error["code"] == "HEADERS_TOO_LARGE"
    assert "at most 100 headers" in answer.error["message"]


def test_a_head_within_the_limits_is_served(served):
    headers = [(f"X-H{i}", "v" * 200) for i in range(90)]
    assert exchange(served, request_bytes("GET", "/health", headers)).status == 200


def test_a_client_that_never_finishes_its_headers_is_disconnected(served):
    started = time.monotonic()
    with connect(served) as sock:
        # One byte every 0.2 s: each resets uvicorn's keep-alive timer, none completes the head.
        alive = send_slowly(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200,
                            interval=0.2, until=started + HEADER_TIMEOUT_S + 8)
        assert not alive or Reader(sock).closed(within=1)
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 8


def test_a_client_that_sends_nothing_is_disconnected(served):
    with connect(served) as sock:
        assert Reader(sock).closed(within=HEADER_TIMEOUT_S + 6)


def test_bytes_that_are_not_http_are_400_in_the_envelope(served):
    answer = exchange(served, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
    assert answer.status == 400 and answer.error["code"] == "MALFORMED_REQUEST"


@pytest.mark.parametrize("method, path", [("GET", "/health"), ("GET", "/patients"),
                                          ("DELETE", "/patients/00000000-0000-0000-0000-000000000000"),
                                          ("POST", "/auth/login")])
def test_a_chunked_body_beyond_the_limit_is_413_without_a_token_on_any_method(served, method, path):
    with connect(served) as sock:
        sock.sendall(request_bytes(method, path, {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}))
        sent = 0
        try:
            while sent < 8 * MAX_BODY_BYTES:  # far more than the limit: the server stops reading first
                sock.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                sent += 0x4000
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = Reader(sock).answer()
    assert answer.status == 413 and answer.error["code"] == "PAYLOAD_TOO_LARGE", (method, path)
    assert answer.headers["connection"] == "close"


def test_a_declared_length_beyond_the_limit_is_413_before_the_body(served):
    raw = request_bytes("GET", "/health", {"Content-Length": str(10 * MAX_BODY_BYTES)})
    answer = exchange(served, raw)  # no body sent at all
    assert answer.status == 413 and answer.error["code"] == "PAYLOAD_TOO_LARGE"


def test_a_valid_chunked_json_body_is_accepted(served, org_a):
    body = json.dumps({"branch_id": org_a.branch_id, "name": "Chunked Patient"}).encode()
    raw = request_bytes("POST", "/patients", {**org_a.headers, "Content-Type": "application/json",
                                              "Transfer-Encoding": "chunked"}) + chunked(body[:7], body[7:30], body[30:])
    answer = exchange(served, raw)
    assert answer.status == 201, answer.body
    assert answer.json()["data"]["name"] == "Chunked Patient"


@pytest.mark.parametrize("method, path", [("GET", "//health"), ("GET", "//patients"), ("POST", "//auth/login"),
                                          ("GET", "/patients//x"), ("GET", "/%2F/health")])
def test_doubled_slashes_are_404(served, org_a, method, path):
    raw = _json_request(method, path, {"email": "a@example.com", "password": "x"}, org_a.headers) \
        if method == "POST" else request_bytes(method, path, org_a.headers)
    answer = exchange(served, raw)
    assert answer.status == 404 and answer.error["code"] == "NOT_FOUND", (path, answer.body)


# --- point 2: values that cannot be stored ------------------------------------------------------

def test_a_lone_surrogate_is_400_naming_the_field_even_without_a_token(served):
    raw = request_bytes("POST", "/auth/login", {"Content-Type": "application/json"},
                        b'{"email": "a\\ud800b@example.com", "password": "correct horse battery"}')
    answer = exchange(served, raw)
    assert answer.status == 400 and answer.error == {
        "code": "VALIDATION_ERROR", "field": "email",
        "message": "email: text may not contain NUL (U+0000) or a lone UTF-16 surrogate"}


def test_a_body_without_content_type_is_415(served, org_a):
    raw = _json_request("POST", "/patients", {"branch_id": org_a.branch_id, "name": "Untyped"}, org_a.headers,
                        content_type=None)
    answer = exchange(served, raw)
    assert answer.status == 415 and answer.error["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_the_last_day_of_the_calendar_is_answered(served, org_a):
    answer = exchange(served, request_bytes("GET", "/appointments?date=9999-12-31", org_a.headers))
    assert answer.status == 200 and answer.json()["data"]["total"] == 0


def test_a_token_whose_exp_is_a_string_is_401(served, org_a):
    now = int(time.time())
    claims = {"sub": org_a.admin_id, "org_id": org_a.org_id, "roles": ["admin"], "scope": "patients:read",
              "jti": "j", "iat": now, "exp": str(now + 600), "iss": "clinic-api", "aud": "clinic-api"}
    token = sign_token(claims)
    for _ in range(2):  # the second use meets the verified-token cache
        answer = exchange(served, request_bytes("GET", "/patients", {"Authorization": f"Bearer {token}"}))
        assert answer.status == 401 and answer.error["code"] == "UNAUTHORIZED"


# --- point 3: X-Forwarded-For -------------------------------------------------------------------

def _login_ip(base, org, engine, forwarded_for: str) -> str:
    raw = _json_request("POST", "/auth/login", {"email": org.admin_email, "password": PASSWORD},
                        {"X-Forwarded-For": forwarded_for})
    assert exchange(base, raw).status == 200
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT ip_address FROM audit_log WHERE org_id = :org AND action = 'login' "
                                    "ORDER BY created_at DESC LIMIT 1"), {"org": org.org_id}).scalar_one()


def test_without_trusted_proxies_a_loopback_client_cannot_pick_its_address(served, org_a, engine):
    assert _login_ip(served, org_a, engine, "203.0.113.9") == "127.0.0.1"


def test_without_trusted_proxies_forwarded_for_does_not_reset_the_login_limit(database_url):
    process, base = spawn_server(database_url, production=True, APP_ENV="production", WEB_CONCURRENCY="1",
                                 RATE_LIMIT_ENABLED="true", WEBHOOK_WORKER="false")
    try:
        statuses = []
        for i in range(12):
            raw = _json_request("POST", "/auth/login", {"email": f"nobody{i}@example.com", "password": "x" * 12},
                                {"X-Forwarded-For": f"198.51.100.{i}"})
            statuses.append(exchange(base, raw).status)
    finally:
        process.terminate()
        process.wait(timeout=40)
    assert statuses == [401] * 10 + [429] * 2


def test_a_trusted_proxy_is_believed(database_url, org_a, engine):
    process, base = spawn_server(database_url, production=True, APP_ENV="production", WEB_CONCURRENCY="1",
                                 TRUSTED_PROXIES="127.0.0.1", WEBHOOK_WORKER="false")
    try:
        assert _login_ip(base, org_a, engine, "203.0.113.9") == "203.0.113.9"
    finally:
        process.terminate()
        process.wait(timeout=40)


def test_every_answer_denies_framing(served, org_a):
    for raw in (request_bytes("GET", "/health"), request_bytes("GET", "/patients", org_a.headers),
                request_bytes("GET", "/nowhere"), request_bytes("GET", "/openapi.json")):
        answer = exchange(served, raw)
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"
