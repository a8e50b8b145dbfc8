"""Webhooks end to end: a real HTTP receiver on loopback, the real delivery worker (threads in
this process, or ``clinic-api worker`` processes), every signature checked with the
``standardwebhooks`` verifier."""
from __future__ import annotations

import datetime as dt
import http.server
import os
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

import config
from models import database
from tests.conftest import TEST_ENV, error_of

# Short retries, so that a test waits for three attempts in well under a second.
FAST = {"webhook_retry_base_ms": 50, "webhook_retry_max_ms": 200, "webhook_poll_interval_ms": 100}
FAST_ENV = {"WEBHOOK_RETRY_BASE_MS": "50", "WEBHOOK_RETRY_MAX_MS": "200", "WEBHOOK_POLL_INTERVAL_MS": "100"}


class Receiver:
    """An HTTP server on a free loopback port that records each POST and answers with the next
    status of ``statuses`` (then 200). ``hold`` makes it keep the first request open."""

    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.hold: threading.Event | None = None
        self.headers: dict[str, str] = {}
        self.body = b"ok"
        self.cut_off = False
        self.arrived = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                with receiver.arrived:
                    receiver.requests.append({"headers": dict(self.headers), "body": body,
                                              "at": time.monotonic()})
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    hold, receiver.hold = receiver.hold, None
                    receiver.arrived.notify_all()
                if hold is not None:
                    hold.wait(30)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(receiver.body)), **receiver.headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(receiver.body)
                except OSError:  # the worker read what it needed and went away
                    receiver.cut_off = True

            def log_message(self, *_args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{host}:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.requests) < count and time.monotonic() < deadline:
                self.arrived.wait(deadline - time.monotonic())
            return list(self.requests)

    def events(self, secret: str) -> list[dict]:
        """Every request's body, after checking its signature."""
        return [Webhook(secret).verify(r["body"], r["headers"]) for r in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def unsubscribe_afterwards(engine):
    """Each test's subscriptions end with it: no worker of a later test retries its deliveries."""
    yield
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE webhook_subscription SET deleted_at = now() WHERE deleted_at IS NULL"))


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def _worker(database_url, settings, **overrides):
    from worker import DeliveryWorker

    worker_settings = settings.with_overrides(**{**FAST, **overrides})
    engine = database.create_pools(database_url, worker_settings).writer
    return DeliveryWorker(engine, worker_settings, listen_url=database_url).start()


@pytest.fixture
def delivery_worker(database_url, settings):
    worker = _worker(database_url, settings)
    yield worker
    worker.close()
    worker.engine.dispose()


def subscribe(client, org, url, events=("patient.created",), **fields) -> dict:
    response = client.post("/webhooks", json={"url": url, "events": list(events), **fields}, headers=org.headers)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/webhooks/{response.json()['data']['id']}"
    return response.json()["data"]


def deliveries(client, org, webhook_id) -> list[dict]:
    response = client.get(f"/webhooks/{webhook_id}/deliveries", headers=org.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["deliveries"]


def create_patient(client, org, name="Ada Lovelace") -> dict:
    response = client.post("/patients", json={"branch_id": org.branch_id, "name": name}, headers=org.headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def test_a_created_patient_arrives_signed_within_a_second(client, org_a, receiver, delivery_worker):
    hook = subscribe(client, org_a, receiver.url)
    assert hook["secret"].startswith("whsec_") and hook["include"] == "ids"
    assert "secret" not in client.get(f"/webhooks/{hook['id']}", headers=org_a.headers).json()["data"]
    assert 'rel="first"' in client.get(f"/webhooks/{hook['id']}/deliveries", headers=org_a.headers).headers["link"]
    patient = create_patient(client, org_a)
    committed = time.monotonic()
    arrived = receiver.wait_for(1, timeout=1.0)
    assert len(arrived) == 1 and arrived[0]["at"] - committed < 1.0
    [event] = receiver.events(hook["secret"])
    assert event["type"] == "patient.created"
    assert event["data"]["id"] == patient["id"] and event["data"]["branch_id"] == org_a.branch_id
    assert "name" in event["data"]["changed"]
    assert "Ada" not in arrived[0]["body"]  # include=ids: no patient data leaves
    [delivery] = deliveries(client, org_a, hook["id"])
    assert arrived[0]["headers"]["webhook-id"] == delivery["id"]
    deadline = time.monotonic() + 5
    while delivery["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
        [delivery] = deliveries(client, org_a, hook["id"])
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1 and delivery["last_status_code"] == 200


def test_full_events_carry_the_record_and_the_changed_fields(client, org_a, receiver, delivery_worker):
    hook = subscribe(client, org_a, receiver.url, events=["patient.updated", "patient.deleted"], include="full")
    patient = create_patient(client, org_a)
    assert client.patch(f"/patients/{patient['id']}", json={"name": "Ada King"}, headers=org_a.headers).status_code == 200
    assert client.delete(f"/patients/{patient['id']}", headers=org_a.headers).status_code == 204
    receiver.wait_for(2)
    updated, deleted = receiver.events(hook["secret"])
    assert updated["type"] == "patient.updated" and updated["data"]["changed"] == ["name"]
    assert updated["data"]["record"]["name"] == "Ada King"
    assert deleted["type"] == "patient.deleted" and deleted["data"]["record"]["deleted_at"] is not None


def test_a_rolled_back_change_never_arrives(app, client, engine, org_a, receiver, delivery_worker):
    from models import crud
    from models.tenancy import Caller

    patients = app.state.resources["patient"]

    hook = subscribe(client, org_a, receiver.url)
    caller = Caller(user_id=org_a.admin_id, org_id=org_a.org_id, scopes=frozenset())
    with engine.connect() as conn:
        transaction = conn.begin()
        ghost = crud._insert_audited(conn, patients, caller, {"branch_id": org_a.branch_id, "name": "Ghost"})
        written = conn.execute(sa.text("SELECT count(*) FROM outbox_event WHERE resource_id = :id"),
                               {"id": ghost["id"]}).scalar_one()
        assert written == 1  # the outbox row is part of the change...
        transaction.rollback()  # ...and goes with it
    refused = client.post("/patients", json={"branch_id": str(uuid.uuid4()), "name": "Nobody"}, headers=org_a.headers)
    assert refused.status_code == 422
    real = create_patient(client, org_a, "Real")
    receiver.wait_for(1)
    time.sleep(0.5)  # time enough for anything else to arrive
    assert [e["data"]["id"] for e in receiver.events(hook["secret"])] == [real["id"]]


def test_the_third_attempt_after_two_500s_carries_the_same_id(client, org_a, receiver, delivery_worker):
    receiver.statuses = [500, 500]
    hook = subscribe(client, org_a, receiver.url)
    create_patient(client, org_a)
    arrived = receiver.wait_for(3)
    assert len(arrived) == 3
    assert len({r["headers"]["webhook-id"] for r in arrived}) == 1
    assert len({r["body"] for r in arrived}) == 1
    receiver.events(hook["secret"])  # each attempt signed afresh
    deadline = time.monotonic() + 5
    while (delivery := deliveries(client, org_a, hook["id"])[0])["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3 and delivery["last_status_code"] == 200


def _worker_process(database_url, **env):
    command = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main(['worker']))"]
    return subprocess.Popen(command, env={**os.environ, **TEST_ENV, **FAST_ENV, "DATABASE_URL": database_url,
                                          "LOG_LEVEL": "WARNING", **env},
                            cwd=str(config.ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_worker_killed_mid_delivery_leads_to_a_redelivery(client, engine, org_a, receiver, database_url, settings):
    hook = subscribe(client, org_a, receiver.url)
    receiver.hold = threading.Event()
    first = _worker_process(database_url)
    try:
        create_patient(client, org_a)
        [held] = receiver.wait_for(1, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
        receiver.hold = None
    second = _worker_process(database_url)
    try:
        arrived = receiver.wait_for(2, timeout=30)
        with engine.connect() as conn:  # the worker's connections are told apart from the API's
            named = conn.execute(sa.text("SELECT query FROM pg_stat_activity WHERE application_name = :name "
                                         "AND datname = current_database()"), {"name": "clinic-api-webhooks"}).scalars().all()
        assert any(q.startswith("LISTEN") for q in named) and len(named) >= 2, named  # the listener and the pool
    finally:
        second.terminate()
        second.wait(30)
    assert len(arrived) == 2
    assert arrived[1]["headers"]["webhook-id"] == held["headers"]["webhook-id"]
    receiver.events(hook["secret"])
    [delivery] = deliveries(client, org_a, hook["id"])
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1  # the killed attempt left no trace


def test_a_thousand_creates_yield_exactly_a_thousand_events(client, org_a, receiver, database_url, settings):
    hook = subscribe(client, org_a, receiver.url)
    workers = [_worker(database_url, settings), _worker(database_url, settings)]  # several at once
    try:
        created = {create_patient(client, org_a, f"Patient {n}")["id"] for n in range(1000)}
        arrived = receiver.wait_for(1000, timeout=60)
        time.sleep(0.5)
    finally:
        for worker in workers:
            worker.close()
            worker.engine.dispose()
    events = receiver.events(hook["secret"])
    assert len(events) == 1000 and {e["data"]["id"] for e in events} == created
    assert len({r["headers"]["webhook-id"] for r in arrived}) == 1000


def test_events_of_one_record_arrive_in_order(client, org_a, receiver, database_url, settings):
    hook = subscribe(client, org_a, receiver.url, events=["patient.created", "patient.updated"], include="full")
    receiver.statuses = [500]  # the first attempt fails: its successors must wait for it
    workers = [_worker(database_url, settings), _worker(database_url, settings)]
    try:
        patient = create_patient(client, org_a, "v0")
        for n in range(1, 6):
            response = client.patch(f"/patients/{patient['id']}", json={"name": f"v{n}"}, headers=org_a.headers)
            assert response.status_code == 200
        receiver.wait_for(7)
    finally:
        for worker in workers:
            worker.close()
            worker.engine.dispose()
    names = [e["data"]["record"]["name"] for e in receiver.events(hook["secret"])]
    assert names == ["v0", "v0", "v1", "v2", "v3", "v4", "v5"]


def test_special_events_are_emitted(client, org_a, receiver, delivery_worker):
    hook = subscribe(client, org_a, receiver.url,
                     events=["appointment.cancelled", "loan_payment.recorded", "inventory_item.low_stock"])
    headers = org_a.headers
    patient = create_patient(client, org_a)
    appointment = client.post("/appointments", json={"patient_id": patient["id"], "staff_id": org_a.admin_id,
                                                     "branch_id": org_a.branch_id, "date": "2027-01-05T10:00:00Z"},
                              headers=headers).json()["data"]
    client.patch(f"/appointments/{appointment['id']}", json={"status": "cancelled"}, headers=headers)
    loan = client.post("/loans", json={"lender": "Bank", "original_amount": 1000, "start_date": "2026-01-01T00:00:00Z"},
                       headers=headers).json()["data"]
    assert client.post(f"/loans/{loan['id']}/payments", json={"amount": 100}, headers=headers).status_code == 201
    item = client.post("/inventory", json={"branch_id": org_a.branch_id, "name": "Gauze", "sku": uuid.uuid4().hex[:8],
                                           "quantity": 10, "reorder_point": 3, "price": 2.5},
                       headers=headers).json()["data"]
    client.patch(f"/inventory/{item['id']}", json={"quantity": 5}, headers=headers)  # still above
    client.patch(f"/inventory/{item['id']}", json={"quantity": 3}, headers=headers)  # falls to it
    client.patch(f"/inventory/{item['id']}", json={"quantity": 2}, headers=headers)  # already low
    receiver.wait_for(3)
    time.sleep(0.3)
    types = sorted(e["type"] for e in receiver.events(hook["secret"]))
    assert types == ["appointment.cancelled", "inventory_item.low_stock", "loan_payment.recorded"]


def test_ping_retry_and_a_rotated_secret(client, org_a, receiver, delivery_worker):
    hook = subscribe(client, org_a, receiver.url)
    pinged = client.post(f"/webhooks/{hook['id']}/ping", headers=org_a.headers)
    assert pinged.status_code == 202, pinged.text
    receiver.wait_for(1)
    assert receiver.events(hook["secret"])[0]["type"] == "webhook.ping"
    again = client.post(f"/webhooks/{hook['id']}/deliveries/{pinged.json()['data']['id']}/retry", headers=org_a.headers)
    assert again.status_code == 202, again.text
    arrived = receiver.wait_for(2)
    assert arrived[1]["headers"]["webhook-id"] == arrived[0]["headers"]["webhook-id"]
    rotated = client.patch(f"/webhooks/{hook['id']}", json={"rotate_secret": True}, headers=org_a.headers)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["data"]["secret"]
    assert new_secret != hook["secret"]
    create_patient(client, org_a)
    signed = receiver.wait_for(3)[2]
    for secret in (hook["secret"], new_secret):  # the old key still signs, alongside the new one
        Webhook(secret).verify(signed["body"], signed["headers"])
    assert len(signed["headers"]["webhook-signature"].split(" ")) == 2
    missing = client.post(f"/webhooks/{hook['id']}/deliveries/{uuid.uuid4()}/retry", headers=org_a.headers)
    assert missing.status_code == 404


def test_a_paused_subscription_hears_nothing(client, org_a, receiver, delivery_worker):
    hook = subscribe(client, org_a, receiver.url)
    paused = client.patch(f"/webhooks/{hook['id']}", json={"status": "paused"}, headers=org_a.headers)
    assert paused.status_code == 200 and "secret" not in paused.json()["data"]
    create_patient(client, org_a)
    assert client.post(f"/webhooks/{hook['id']}/ping", headers=org_a.headers).status_code == 422
    time.sleep(0.5)
    assert receiver.requests == [] and deliveries(client, org_a, hook["id"]) == []


def test_private_targets_are_refused_unless_allowed(app_with, org_a, receiver, database_url, settings):
    guarded = app_with(webhook_allow_private_targets=False)
    with guarded.test_client() as strict:
        for url in (receiver.url, "http://localhost/hooks", "http://169.254.169.254/latest/meta-data",
                    "http://10.1.2.3/", "http://[::1]/", "ftp://example.org/", "http://user:pw@127.0.0.1/"):
            refused = strict.post("/webhooks", json={"url": url, "events": ["patient.created"]}, headers=org_a.headers)
            assert refused.status_code == 422, (url, refused.text)
            assert error_of(refused) == {"code": "WEBHOOK_TARGET_REFUSED", "message": error_of(refused)["message"],
                                         "field": "url"}
    from models import webhooks

    production = settings.with_overrides(env="production", webhook_allow_private_targets=True)
    with pytest.raises(Exception, match="https"):
        webhooks.safe_addresses(receiver.url, production)


def test_a_private_target_is_refused_at_delivery_too(client, org_a, receiver, database_url, settings):
    hook = subscribe(client, org_a, receiver.url)  # allowed when subscribing (tests allow loopback)...
    worker = _worker(database_url, settings, webhook_allow_private_targets=False)  # ...not when delivering
    try:
        create_patient(client, org_a)
        deadline = time.monotonic() + 5
        while not (found := deliveries(client, org_a, hook["id"]))[0]["attempts"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.close()
        worker.engine.dispose()
    assert receiver.requests == []
    assert found[0]["last_error"].startswith("refused") and found[0]["last_status_code"] is None


def test_failing_for_the_whole_window_fails_the_delivery_and_disables_the_subscription(
        app_with, org_a, receiver, database_url, settings):
    receiver.statuses = [500] * 1000
    short = app_with(webhook_retry_window_s=1)
    worker = _worker(database_url, settings, webhook_retry_window_s=1)
    try:
        with short.test_client() as client:
            hook = subscribe(client, org_a, receiver.url)
            create_patient(client, org_a)
            deadline = time.monotonic() + 10
            while (state := client.get(f"/webhooks/{hook['id']}", headers=org_a.headers).json()["data"])["status"] \
                    == "active" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert state["status"] == "disabled" and state["failing_since"] is not None
            [delivery] = deliveries(client, org_a, hook["id"])
            assert delivery["status"] == "failed" and delivery["attempts"] >= 2 and delivery["last_status_code"] == 500
            trail = client.get("/audit-logs", params={"resource": "webhook", "action": "disable"},
                               headers=org_a.headers).json()["data"]["audit_logs"]
            assert [row["resource_id"] for row in trail] == [hook["id"]]
            assert client.patch(f"/webhooks/{hook['id']}", json={"status": "active"},
                                headers=org_a.headers).json()["data"]["failing_since"] is None
    finally:
        worker.close()
        worker.engine.dispose()


def test_commit_to_delivery_latency_is_under_200_ms_at_the_median(client, org_a, receiver, delivery_worker):
    subscribe(client, org_a, receiver.url)
    latencies = []
    for n in range(30):
        create_patient(client, org_a, f"Latency {n}")
        committed = time.monotonic()
        arrived = receiver.wait_for(n + 1, timeout=5)
        latencies.append(arrived[n]["at"] - committed)
    median = statistics.median(latencies)
    print(f"commit-to-delivery latency over 30 creates: p50 {median * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    assert median < 0.2


def test_the_backlog_is_exported(client, org_a, receiver):
    subscribe(client, org_a, receiver.url)
    create_patient(client, org_a)  # no worker runs: it waits
    exported = client.get("/metrics").text
    depth = [line for line in exported.splitlines() if line.startswith("webhook_outbox_depth ")]
    age = [line for line in exported.splitlines() if line.startswith("webhook_outbox_oldest_age_seconds ")]
    assert depth and float(depth[0].split()[1]) >= 1
    assert age and float(age[0].split()[1]) >= 0
    assert "# TYPE webhook_deliveries_total counter" in exported


def test_other_organizations_see_nothing(client, org_a, org_b, receiver):
    hook = subscribe(client, org_a, receiver.url)
    assert client.get(f"/webhooks/{hook['id']}", headers=org_b.headers).status_code == 404
    assert client.get(f"/webhooks/{hook['id']}/deliveries", headers=org_b.headers).status_code == 404
    assert client.post(f"/webhooks/{hook['id']}/ping", headers=org_b.headers).status_code == 404
    assert client.get("/webhooks", headers=org_b.headers).json()["data"]["total"] == 0
    create_patient(client, org_b)
    assert deliveries(client, org_a, hook["id"]) == []


def _first_attempt(client, org, webhook_id, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while not (found := deliveries(client, org, webhook_id)) or not found[0]["attempts"]:
        assert time.monotonic() < deadline, "no attempt was made"
        time.sleep(0.05)
    return found[0]


def test_redirects_are_not_followed(client, org_a, receiver, delivery_worker):
    elsewhere = Receiver()
    try:
        receiver.statuses = [307] * 100
        receiver.headers = {"Location": elsewhere.url}
        hook = subscribe(client, org_a, receiver.url)
        create_patient(client, org_a)
        delivery = _first_attempt(client, org_a, hook["id"])
        time.sleep(0.3)
        assert delivery["last_status_code"] == 307 and delivery["status"] == "pending"
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def _certificates(tmp_path, names):
    """A certificate authority (its PEM file) and, for each of ``names``, a server context whose
    certificate that authority signed for that DNS name only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def issue(subject, issuer, key, signer, *, ca, name=None):
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if name:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem(cert):
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clinic-api test authority")])
    authority = issue(ca_name, ca_name, ca_key, ca_key, ca=True)
    (tmp_path / "authority.pem").write_bytes(pem(authority))
    contexts = []
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name, key, ca_key, ca=False, name=name)
        (tmp_path / f"{name}.pem").write_bytes(pem(cert) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / f"{name}.pem")
        contexts.append(context)
    return tmp_path / "authority.pem", contexts


def test_https_deliveries_go_to_the_checked_address_under_the_urls_name(
        client, org_a, delivery_worker, tmp_path, monkeypatch):
    """The worker connects to the address it checked, and TLS still checks the certificate
    against the URL's host name: a certificate for another name gets nothing delivered."""
    authority, (for_localhost, for_elsewhere) = _certificates(tmp_path, ["localhost", "elsewhere.example"])
    monkeypatch.setenv("SSL_CERT_FILE", str(authority))
    names_seen = []
    for_localhost.sni_callback = lambda _sock, name, _context: names_seen.append(name)
    right, wrong = Receiver(tls=for_localhost, host="localhost"), Receiver(tls=for_elsewhere, host="localhost")
    try:
        hook = subscribe(client, org_a, right.url)
        refused = subscribe(client, org_a, wrong.url)
        patient = create_patient(client, org_a)
        right.wait_for(1)
        [event] = right.events(hook["secret"])
        assert event["data"]["id"] == patient["id"] and "localhost" in names_seen
        attempt = _first_attempt(client, org_a, refused["id"])
        assert attempt["last_status_code"] is None and "certificate" in attempt["last_error"].lower()
        assert wrong.requests == []
    finally:
        right.close()
        wrong.close()


def test_a_slow_receiver_times_out_and_a_large_answer_is_cut(client, org_a, receiver, delivery_worker, monkeypatch):
    import worker

    monkeypatch.setattr(worker, "TOTAL_TIMEOUT_S", 1.0)
    held = receiver.hold = threading.Event()  # the first request gets no answer
    receiver.body = b"x" * (32 * 1024 * 1024)  # the second a huge one: 64 KB of it is read
    hook = subscribe(client, org_a, receiver.url)
    create_patient(client, org_a)
    first, second = receiver.wait_for(2)
    held.set()
    assert 1.0 <= second["at"] - first["at"] < 4.0  # the worker gave up on the first after 1 s
    deadline = time.monotonic() + 10
    while (delivery := deliveries(client, org_a, hook["id"])[0])["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 2 and delivery["last_status_code"] == 200
    assert receiver.cut_off


def test_a_slow_receiver_holds_back_only_its_own_deliveries(client, org_a, receiver, delivery_worker):
    quick = Receiver()
    try:
        held = receiver.hold = threading.Event()
        subscribe(client, org_a, receiver.url)
        subscribe(client, org_a, quick.url)
        create_patient(client, org_a)  # one statement: both deliveries due at once, likely one batch
        receiver.wait_for(1)
        assert len(quick.wait_for(1, timeout=2.0)) == 1  # while the slow one still holds its POST
        held.set()
    finally:
        quick.close()


def _claim(engine, lease_s=30.0):
    from models import webhooks

    with engine.begin() as conn:
        return webhooks.claim(conn, limit=50, lease_s=lease_s)


def _record(engine, token, *outcomes):
    from models import webhooks

    with engine.begin() as conn:
        return webhooks.record(conn, token, list(outcomes), window_s=60)


def test_a_batch_holds_the_first_pending_event_of_each_record_only(client, org_a, receiver, engine):
    from models import webhooks

    subscribe(client, org_a, receiver.url, events=["patient.created", "patient.updated"])
    first = create_patient(client, org_a, "v0")
    for n in (1, 2):
        client.patch(f"/patients/{first['id']}", json={"name": f"v{n}"}, headers=org_a.headers)
    second = create_patient(client, org_a, "w0")
    token, claims = _claim(engine)  # no worker runs: everything is due
    assert sorted((c.resource_id, c.event_type) for c in claims) == sorted(
        [(first["id"], "patient.created"), (second["id"], "patient.created")])
    assert _claim(engine)[1] == []  # leased, and the updates wait for the create
    recorded = _record(engine, token, *(webhooks.Outcome(c, succeeded=True, status_code=200) for c in claims))
    assert set(recorded.statuses.values()) == {"succeeded"} and not recorded.disabled
    _, claims = _claim(engine)
    assert [(c.resource_id, c.event_type) for c in claims] == [(first["id"], "patient.updated")]
    assert claims[0].record["name"] == "v1"


def test_a_lease_that_ran_out_passes_the_delivery_on_and_its_late_outcome_is_dropped(
        client, org_a, receiver, engine):
    from models import webhooks

    hook = subscribe(client, org_a, receiver.url)
    create_patient(client, org_a)
    stale_token, [stale] = _claim(engine, lease_s=0.5)
    time.sleep(0.7)
    token, [claim] = _claim(engine)  # the first worker went quiet: another claims the same delivery
    assert claim.delivery_id == stale.delivery_id and claim.attempts == 0
    late = _record(engine, stale_token, webhooks.Outcome(stale, succeeded=True, status_code=200))
    assert late.statuses == {}  # nothing written over the lease that holds it now
    released = _record(engine, token, webhooks.Outcome(claim, sent=False))  # handed back unsent
    assert released.statuses == {claim.delivery_id: "pending"}
    [delivery] = deliveries(client, org_a, hook["id"])
    assert delivery["status"] == "pending" and delivery["attempts"] == 0 and delivery["last_attempt_at"] is None
    assert "locked_until" not in delivery and "lease_token" not in delivery
    _, [again] = _claim(engine)  # a released delivery is due at once
    assert again.delivery_id == claim.delivery_id


def test_old_deliveries_and_the_events_they_leave_are_pruned_in_batches(
        client, org_a, receiver, engine, database_url, settings, monkeypatch):
    import worker

    monkeypatch.setattr(worker, "PRUNE_BATCH", 2)  # several batches for a handful of rows
    hook = subscribe(client, org_a, receiver.url)
    other = subscribe(client, org_a, receiver.url)  # each event has a delivery to both
    gone = subscribe(client, org_a, receiver.url)
    patients = [create_patient(client, org_a, f"P{n}")["id"] for n in range(5)]
    assert client.delete(f"/webhooks/{gone['id']}", headers=org_a.headers).status_code == 204

    def age(subscription, patient, status, days, retried_days=None):
        with engine.begin() as conn:
            conn.execute(sa.text(
                "UPDATE webhook_delivery SET status = :status, created_at = now() - make_interval(days => :days),"
                " updated_at = now() - make_interval(days => :updated) WHERE subscription_id = :s AND resource_id = :p"),
                {"status": status, "days": days, "updated": days if retried_days is None else retried_days,
                 "s": subscription["id"], "p": patients[patient]})

    for n in range(3):
        age(hook, n, "succeeded", 40)
    age(hook, 3, "failed", 40)
    age(hook, 4, "pending", 40)  # still waiting (a paused receiver, say): kept however old
    age(other, 0, "succeeded", 40)
    age(other, 1, "succeeded", 40, retried_days=1)  # replayed yesterday: as young as its last attempt
    age(other, 2, "succeeded", 1)
    for n in range(5):
        age(gone, n, "pending", 40)  # of a deleted subscription: nothing will send them
    running = _worker(database_url, settings, webhook_delivery_retention_days=30)  # prunes as it starts
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                left = conn.execute(sa.text(
                    "SELECT subscription_id, resource_id FROM webhook_delivery WHERE subscription_id IN (:a, :b, :c)"),
                    {"a": hook["id"], "b": other["id"], "c": gone["id"]}).all()
            if len(left) <= 5:
                break
            time.sleep(0.1)
    finally:
        running.close()
        running.engine.dispose()
    kept = {(s, patients.index(p)) for s, p in left}
    assert kept == {(hook["id"], 4), (other["id"], 1), (other["id"], 2), (other["id"], 3), (other["id"], 4)}
    with engine.connect() as conn:
        events = dict(conn.execute(sa.text("SELECT resource_id, count(*) FROM outbox_event WHERE resource_id IN :ids"
                                           " GROUP BY resource_id").bindparams(sa.bindparam("ids", expanding=True)),
                                   {"ids": patients}).all())
    # P0's event lost its last delivery and went with it; every other event is still referred to.
    assert set(events) == set(patients[1:])


def test_no_worker_is_woken_while_one_has_promised_to_claim_again(client, org_a, receiver, engine, database_url):
    """A delivery's commit notifies the listening workers, except while a worker that has just
    found deliveries will claim again anyway; a claim that finds nothing, or a promise not kept
    in time, lets the next commit notify again (sql/0030)."""
    import select

    import psycopg2

    from models import webhooks

    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    listener.cursor().execute("LISTEN webhook_delivery")

    def notified(within: float = 2.0) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            select.select([listener], [], [], 0.05)
            listener.poll()
            if listener.notifies:
                listener.notifies.clear()
                return True
        return False

    def claimed(promise_s: float) -> int:
        with engine.begin() as conn:
            return len(webhooks.claim(conn, limit=50, lease_s=30, promise_s=promise_s)[1])

    try:
        subscribe(client, org_a, receiver.url)
        create_patient(client, org_a, "first")
        assert notified()
        assert claimed(promise_s=30) == 1
        create_patient(client, org_a, "second")
        assert not notified(0.5)  # the worker that claimed the first claims this one with its next
        assert claimed(promise_s=30) == 1
        assert claimed(promise_s=30) == 0  # nothing due: the promise is withdrawn
        create_patient(client, org_a, "third")
        assert notified()
        assert claimed(promise_s=0.3) == 1
        time.sleep(0.4)  # the worker never came back in time
        create_patient(client, org_a, "fourth")
        assert notified()
    finally:
        listener.close()
