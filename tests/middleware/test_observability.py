"""Metrics label every request by route template and real status; one JSON log line per request."""
import json
import logging
import re
import uuid

from middleware.observability import JsonFormatter


def metric_value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_requests_are_counted_by_template_and_status(client, org_a):
    before = client.get("/metrics").text
    missing = str(uuid.uuid4())
    client.get(f"/patients/{missing}", headers=org_a.headers)  # 404 from the handler
    client.get("/no/such/route")  # 404 from routing
    client.put("/patients", headers=org_a.headers)  # 405 from the method check
    client.get("/patients")  # 401 from security
    after = client.get("/metrics").text
    for labels in ({"method": "GET", "route": "/patients/{id}", "status": "404"},
                   {"method": "GET", "route": "unmatched", "status": "404"},
                   {"method": "PUT", "route": "/patients", "status": "405"},
                   {"method": "GET", "route": "/patients", "status": "401"}):
        assert metric_value(after, "http_requests_total", **labels) == metric_value(before, "http_requests_total", **labels) + 1, labels
    assert missing not in after
    assert metric_value(after, "http_request_duration_seconds_count", route="/patients/{id}") >= 1
    assert "http_requests_in_progress" in after
    assert 'db_pool_connections{pool="reader",state="checked_out"}' in after


def test_rate_limited_and_login_failures_are_counted(app_with):
    limited = app_with(rate_limit_enabled=True, rate_limit_default="1/minute")
    client = limited.test_client(client=("10.9.0.1", 1))
    before = client.get("/metrics").text
    client.get("/patients")
    client.get("/patients")
    client.post("/auth/login", json={"email": "nobody@example.com", "password": "xxxxxxxx"})
    after = client.get("/metrics").text
    assert metric_value(after, "http_requests_total", route="/patients", status="429") >= 1
    assert metric_value(after, "rate_limited_requests_total", policy="default") > metric_value(before, "rate_limited_requests_total", policy="default")


def test_login_failures_metric(client):
    before = metric_value(client.get("/metrics").text, "auth_login_failures_total")
    client.post("/auth/login", json={"email": "nobody@example.com", "password": "xxxxxxxx"})
    assert metric_value(client.get("/metrics").text, "auth_login_failures_total") == before + 1


def test_one_json_line_per_request_without_secrets(client, org_a, caplog):
    caplog.set_level(logging.INFO, logger="clinic_api.access")
    client.get("/patients", headers={**org_a.headers, "X-Request-ID": "log-check-1"})
    records = [r for r in caplog.records if r.name == "clinic_api.access"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    entry = json.loads(line)
    assert entry["request_id"] == "log-check-1" and entry["route"] == "/patients"
    assert entry["status"] == 200 and entry["method"] == "GET" and entry["duration_ms"] >= 0
    assert entry["user_id"] == org_a.admin_id and entry["org_id"] == org_a.org_id
    assert org_a.access_token not in line and "Authorization" not in line


def test_login_does_not_log_passwords_or_tokens(client, org_a, caplog):
    caplog.set_level(logging.DEBUG)
    response = client.post("/auth/login", json={"email": org_a.admin_email, "password": "correct horse battery"})
    token = response.json()["data"]["access_token"]
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "correct horse battery" not in text and token not in text
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", text)


def test_metrics_add_up_across_gunicorn_workers(database_url, tmp_path):
    """With two workers, whichever answers /metrics reports the requests both served."""
    import signal
    import time

    import httpx

    from tests.conftest import spawn_server

    token = "scrape-token-0123456789abcdef"
    server, base = spawn_server(database_url, production=True, APP_ENV="production", WEB_CONCURRENCY="2",
                                DATA_DIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR="", METRICS_TOKEN=token)
    try:
        for _ in range(40):  # fresh connections, spread over both workers by the kernel
            httpx.get(f"{base}/no-such-route")
        scrape = {"Authorization": f"Bearer {token}"}
        scrapes = {metric_value(httpx.get(f"{base}/metrics", headers=scrape).text, "http_requests_total",
                                method="GET", route="unmatched", status="404") for _ in range(6)}
        assert scrapes == {40.0}
        # One file per gunicorn worker, and the webhook delivery worker's: its counts join the API's.
        deadline = time.monotonic() + 15
        own = tmp_path / "metrics" / str(server.pid)  # the instance's own folder
        while len(files := list(own.glob("counter_*.db"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(files) == 3
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_two_instances_in_one_data_directory_keep_their_own_metrics(database_url, tmp_path):
    """A second ``clinic-api serve`` from the same DATA_DIR neither clears nor adds to the first's
    counts; an instance's folder goes when it stops, and a dead instance's at the next start."""
    import signal

    import httpx

    from tests.conftest import spawn_server

    token = "scrape-token-0123456789abcdef"
    options = dict(production=True, APP_ENV="production", WEB_CONCURRENCY="2", WEBHOOK_WORKER="false",
                   DATA_DIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR="", METRICS_TOKEN=token)
    scrape = {"Authorization": f"Bearer {token}"}

    def unmatched(base):
        return {metric_value(httpx.get(f"{base}/metrics", headers=scrape).text, "http_requests_total",
                             method="GET", route="unmatched", status="404") for _ in range(4)}

    dead = tmp_path / "metrics" / "999999999"  # no such process: left by an instance that was killed
    dead.mkdir(parents=True)
    (dead / "counter_1.db").write_bytes(b"")
    first, first_base = spawn_server(database_url, **options)
    second = None
    try:
        for _ in range(10):
            httpx.get(f"{first_base}/no-such-route")
        assert not dead.exists()
        second, second_base = spawn_server(database_url, **options)
        for _ in range(3):
            httpx.get(f"{second_base}/no-such-route")
        assert unmatched(first_base) == {10.0}
        assert unmatched(second_base) == {3.0}
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
        assert not (tmp_path / "metrics" / str(second.pid)).exists()
        assert unmatched(first_base) == {10.0}
    finally:
        for server in (first, second):
            if server is not None and server.poll() is None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
