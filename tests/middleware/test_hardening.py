"""Graceful failure: a lost database, killed connections, timeouts, CORS and security headers."""
import json
import time

import httpx
import pytest
import sqlalchemy as sa

from middleware.errors import to_api_error
from tests.conftest import error_of, spawn_server


@pytest.fixture(scope="module")
def server_without_database():
    process, base = spawn_server("postgresql://postgres@127.0.0.1:1/nowhere", DB_CONNECT_TIMEOUT_S="2")
    yield base
    process.terminate()
    process.wait(timeout=30)


def test_unreachable_database_health_200_ready_503_api_503(server_without_database, org_a):
    base = server_without_database
    assert httpx.get(f"{base}/health").status_code == 200
    ready = httpx.get(f"{base}/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    started = time.monotonic()
    response = httpx.get(f"{base}/patients", headers=org_a.headers, timeout=10)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert time.monotonic() - started < 5


def test_killed_connections_cost_no_errors_afterwards(live_server, org_a, engine):
    """Reads retry on a fresh connection; the writer pool replaces a connection the server closed
    before a write uses it. Creates of patients are one autocommit statement, updates a
    transaction: both paths check out from the writer pool."""
    body = {"branch_id": org_a.branch_id, "name": "Before The Restart"}

    def writes(http, n):
        codes = []
        for _ in range(n):
            created = http.post("/patients", json=body)
            codes.append(created.status_code)
            if created.status_code == 201:
                patient = created.json()["data"]
                codes.append(http.patch(f"/patients/{patient['id']}", json={"phone": "555 0199"}).status_code)
        return codes

    with httpx.Client(base_url=live_server, headers=org_a.headers, timeout=10) as http:
        for _ in range(5):
            assert http.get("/patients").status_code == 200
        assert set(writes(http, 5)) == {200, 201}
        with engine.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'clinic-api' AND pid <> pg_backend_pid() AND datname = current_database()"
            )).scalar_one()
        assert killed >= 2  # the server's read and write connections at least
        time.sleep(0.2)  # the backends' exit reaches the sockets
        assert [http.get("/patients").status_code for _ in range(10)] == [200] * 10
        assert writes(http, 10) == [201, 200] * 10


def test_statement_timeout_is_a_503_and_lock_timeout_a_409(engine):
    with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as timeout:
            conn.execute(sa.text("SET LOCAL statement_timeout = 50; SELECT pg_sleep(1)"))
    assert to_api_error(timeout.value).code == "SERVICE_UNAVAILABLE"
    with engine.connect() as holder, engine.connect() as waiter:
        holder.execute(sa.text("SELECT id FROM role WHERE name = 'admin' FOR UPDATE"))
        with pytest.raises(sa.exc.DBAPIError) as locked:
            waiter.execute(sa.text("SET LOCAL lock_timeout = 50; SELECT id FROM role WHERE name = 'admin' FOR UPDATE"))
    assert to_api_error(locked.value).code == "CONFLICT"


def test_app_connections_carry_the_timeouts(engine, settings):
    with engine.connect() as conn:
        values = {name: conn.execute(sa.text(
            "SELECT setting::int FROM pg_settings WHERE name = :name"), {"name": name}).scalar_one()
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")}
    assert values == {"statement_timeout": settings.db_statement_timeout_ms,
                      "lock_timeout": settings.db_lock_timeout_ms,
                      "idle_in_transaction_session_timeout": settings.db_idle_in_transaction_timeout_ms}


def test_cors_is_off_by_default(client):
    response = client.options("/patients", headers={"Origin": "https://evil.example",
                                                    "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_listed_origins_and_never_a_wildcard(app_with):
    client = app_with(cors_origins=("https://app.clinic.example",)).test_client()
    allowed = client.options("/patients", headers={"Origin": "https://app.clinic.example",
                                                   "Access-Control-Request-Method": "GET"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.clinic.example"
    assert "access-control-allow-credentials" not in allowed.headers
    other = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


METRICS_TOKEN = "scrape-token-0123456789abcdef"


def test_metrics_need_the_token_in_production_and_are_not_served_without_one(app_with):
    with app_with(env="production").test_client() as http:
        response = http.get("/metrics")
        assert response.status_code == 404 and error_of(response)["code"] == "NOT_FOUND"
    with app_with(env="production", metrics_token=METRICS_TOKEN).test_client() as http:
        for authorization in (None, "Bearer wrong-token", f"Basic {METRICS_TOKEN}", f"Bearer {METRICS_TOKEN}x"):
            response = http.get("/metrics", headers={"Authorization": authorization} if authorization else {})
            assert response.status_code == 401, authorization
            assert error_of(response)["code"] == "UNAUTHORIZED"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        scraped = http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200 and "http_requests_total" in scraped.text


def test_metrics_are_open_in_development_until_a_token_is_set(client, app_with):
    assert client.get("/metrics").status_code == 200
    with app_with(metrics_token=METRICS_TOKEN).test_client() as http:
        assert http.get("/metrics").status_code == 401


def test_serve_docs_false_turns_off_swagger_ui_and_the_spec(client, app_with):
    paths = ("/ui/", "/openapi.json", "/openapi.yaml")
    assert [client.get(path).status_code for path in paths] == [200, 200, 200]
    with app_with(serve_docs=False).test_client() as http:
        for path in paths:
            response = http.get(path)
            assert response.status_code == 404 and error_of(response)["code"] == "NOT_FOUND", path
        assert http.get("/health").status_code == 200


def test_a_chunked_json_body_is_read_like_one_with_a_length(client, org_a):
    body = json.dumps({"branch_id": org_a.branch_id, "name": "Sent In Chunks"}).encode()

    def chunks():
        yield body[:10]
        yield body[10:]

    created = client.post("/patients", content=chunks(), headers={**org_a.headers, "Content-Type": "application/json"})
    assert created.status_code == 201, created.text
    assert created.json()["data"]["name"] == "Sent In Chunks"


@pytest.mark.parametrize("method, path", [("GET", "/patients"), ("DELETE", "/patients/00000000-0000-0000-0000-000000000000"),
                                          ("GET", "/health"), ("POST", "/patients")])
def test_a_chunked_body_beyond_the_limit_is_413_on_every_method(app_with, org_a, method, path):
    def chunks():
        for _ in range(80):
            yield b"x" * 1024

    with app_with(max_body_bytes=64 * 1024).test_client() as http:
        response = http.request(method, path, content=chunks(),
                                headers={**org_a.headers, "Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert error_of(response)["code"] == "PAYLOAD_TOO_LARGE"
