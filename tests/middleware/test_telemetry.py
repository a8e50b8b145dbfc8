"""Tracing and error reports meet the real thing: an OTLP/HTTP receiver and an endpoint speaking
Sentry's envelope protocol, both tiny HTTP servers on loopback that keep what they are sent."""
from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import spawn_server


class Receiver:
    """Keeps the (decompressed) body of every POST; answers 200 with an empty body."""

    def __init__(self):
        self.bodies: list[tuple[str, bytes]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli

                    body = brotli.decompress(body)
                received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, enough, seconds: float = 30.0):
        deadline = time.monotonic() + seconds
        while not enough(self.bodies) and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.bodies

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def _spans(bodies) -> list:
    spans = []
    for path, body in bodies:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                spans += list(scope.spans)
    return spans


def _attributes(span) -> dict:
    out = {}
    for item in span.attributes:
        value = item.value
        out[item.key] = value.string_value or value.int_value
    return out


def test_every_request_is_a_trace_with_its_sql_and_no_patient_data(database_url, org_a, receiver, tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process, base = spawn_server(database_url, stderr=log, LOG_LEVEL="INFO",
                                     OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="clinic-test")
        try:
            created = httpx.post(f"{base}/patients", headers=org_a.headers,
                                 json={"branch_id": org_a.branch_id, "name": "Secretia Lovelace"})
            assert created.status_code == 201
            found = httpx.get(f"{base}/patients", params={"search": "Secretia"}, headers=org_a.headers)
            assert found.status_code == 200
            assert httpx.get(f"{base}/patients/{created.json()['data']['id']}").status_code == 401
        finally:
            process.terminate()  # shutdown exports what the batch still holds
            process.wait(timeout=30)
    spans = _spans(receiver.wait_for(lambda b: len(_spans(b)) >= 6))
    servers = {span.name: span for span in spans if span.kind == span.SPAN_KIND_SERVER}
    assert {"POST /patients", "GET /patients", "GET /patients/{id}"} <= servers.keys()
    listed = servers["GET /patients"]
    assert _attributes(listed) == {"http.request.method": "GET", "http.route": "/patients",
                                   "http.response.status_code": 200, "clinic.org_id": org_a.org_id}
    assert _attributes(servers["GET /patients/{id}"])["http.response.status_code"] == 401
    statements = [span for span in spans if span.parent_span_id == listed.span_id]
    assert statements and all(span.trace_id == listed.trace_id for span in statements)
    assert any("FROM patient" in _attributes(span).get("db.query.text", "") for span in statements)
    names = {span.name for span in statements}  # each named by its SQL verb, never by its text
    assert "SELECT" in names and all(name.isalpha() and name.isupper() for name in names), names
    assert "SET" not in names, names  # a read with its access row is a SELECT, whatever is sent ahead of it
    exported = b"".join(body for _, body in receiver.bodies)
    assert b"clinic-test" in exported
    assert b"Secretia" not in exported and b"Lovelace" not in exported  # no bodies, queries or bound values
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if '"route": "/patients"' in line]
    assert listed.trace_id.hex() in {line.get("trace_id") for line in lines}


def test_tracing_is_off_without_an_endpoint(app, client, org_a):
    assert app.state.tracing is None
    response = client.get("/patients", headers=org_a.headers)
    assert response.status_code == 200


def test_a_bad_endpoint_fails_at_start_naming_the_variable():
    import config

    with pytest.raises(config.ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        config.load({"APP_ENV": "development", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})


def test_an_unhandled_error_reaches_sentry_without_patient_data(app_with, org_a, receiver, monkeypatch):
    import sentry_sdk

    from models import crud

    def explode(resource, caller, body, **kwargs):
        patient = body["name"]  # a local holding patient data, which a report must not carry
        raise RuntimeError(f"the ward printer caught fire ({len(patient)})")

    app = app_with(sentry_dsn=f"http://publickey@{receiver.url.removeprefix('http://')}/42")
    monkeypatch.setattr(crud, "create_row", explode)
    try:
        response = app.test_client().post(
            "/patients", json={"branch_id": org_a.branch_id, "name": "Secretia Lovelace"},
            headers={**org_a.headers, "X-Ward": "Secretia's room"})
        assert response.status_code == 500
        sentry_sdk.flush(timeout=10)
        bodies = receiver.wait_for(lambda b: any(b"the ward printer caught fire" in body for _, body in b))
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # no DSN: later tests report nowhere
    assert [path for path, _ in bodies] and all(path == "/api/42/envelope/" for path, _ in bodies)
    envelope = b"".join(body for _, body in bodies)
    assert b"RuntimeError" in envelope and b"test_telemetry.py" in envelope  # what failed, and where
    for secret in (b"Secretia", b"Lovelace", org_a.access_token.encode(), b"X-Ward", b"Bearer"):
        assert secret not in envelope, secret
