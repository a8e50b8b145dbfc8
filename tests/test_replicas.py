"""Reads on a real streaming replica: GETs go to it while it is up and close behind, a client
reads its own writes, a lagging or stopped replica is skipped, a read-only server is never a 500.

A primary and its hot standby (``pg_basebackup -R``) of PostgreSQL 15 are started for this module,
and ``clinic-api serve`` with two workers reads from the standby.
"""
import re
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from models import database
from tests.conftest import PASSWORD, spawn_server
from tests.services import PostgresServer, create_org, migrated_database

MAX_LAG = 8  # seconds: REPLICA_MAX_LAG_SECONDS of the API under test


@pytest.fixture(scope="module")
def servers(settings):
    primary = PostgresServer.primary()
    replica = None
    try:
        owner, runtime = migrated_database(primary, settings)
        replica = primary.replica()
        yield primary, replica, runtime
    finally:
        if replica is not None:
            replica.remove()
        primary.remove()


def _replica_runtime_url(replica) -> str:
    return replica.url(user=database.EMBEDDED_RUNTIME_ROLE, database="clinic")


@pytest.fixture(scope="module")
def api(servers):
    _primary, replica, runtime = servers
    process, base = spawn_server(runtime, production=True, WEB_CONCURRENCY="2", WEBHOOK_WORKER="false",
                                 DATABASE_REPLICA_URLS=_replica_runtime_url(replica),
                                 REPLICA_MAX_LAG_SECONDS=str(MAX_LAG))
    yield base
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def email(servers, settings) -> str:
    address = f"replica-{uuid.uuid4().hex[:8]}@example.com"
    create_org(servers[2], settings, address, PASSWORD)
    return address


@pytest.fixture(scope="module")
def member(api, email) -> dict:
    token = httpx.post(f"{api}/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _superuser_on(cluster):
    return sa.create_engine(database.sqlalchemy_url(cluster.url(database="clinic")), poolclass=sa.pool.NullPool,
                            isolation_level="AUTOCOMMIT")


def _caught_up(primary, replica, timeout: float = 30) -> None:
    """Wait until the replica has replayed everything the primary has written."""
    with _superuser_on(primary).connect() as conn:
        target = conn.execute(sa.text("SELECT pg_current_wal_lsn()")).scalar()
    deadline = time.monotonic() + timeout
    with _superuser_on(replica).connect() as conn:
        while not conn.execute(sa.text("SELECT pg_last_wal_replay_lsn() >= :t"), {"t": target}).scalar():
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.1)


def _replica_state(api) -> tuple[int, dict]:
    response = httpx.get(f"{api}/ready", timeout=10)
    return response.status_code, response.json()["replicas"][0]


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _metric(text: str, name: str, **labels) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(selector)}\}} (\S+)$", text, re.M)
    assert found, f"{name}{{{selector}}} is not exported"
    return float(found.group(1))


def test_reads_come_from_the_replica_the_writer_reads_its_writes_and_a_lagging_replica_is_skipped(
        api, servers, member):
    primary, replica, _runtime = servers
    _caught_up(primary, replica)
    _wait_for(lambda: _replica_state(api)[1]["state"] == "ok", 15, "the probe never saw the replica")
    with _superuser_on(replica).connect() as conn:
        conn.execute(sa.text("SELECT pg_wal_replay_pause()"))
    try:
        with httpx.Client(base_url=api, headers=member, timeout=10) as writer:  # keeps its cookies
            created = writer.post("/branches", json={"name": "North Wing"})
            written = time.monotonic()
            assert created.status_code == 201, created.text
            branch = created.json()["data"]["id"]
            assert writer.cookies.get("clinic_read_after", "").isdigit()
            # Without the cookie a read goes to the replica, which does not have the row yet: only
            # a replica can answer 404 for it. A few tries, as each worker's probe must see it fit.
            stale = [httpx.get(f"{api}/branches/{branch}", headers=member, timeout=10).status_code
                     for _ in range(6)]
            assert 404 in stale, stale
            # The writer sees its write: the replica has not replayed it, so the primary answers.
            assert writer.get(f"/branches/{branch}").status_code == 200
        # Once it is more than REPLICA_MAX_LAG_SECONDS behind, the replica is skipped: the primary answers.
        _wait_for(lambda: all(httpx.get(f"{api}/branches/{branch}", headers=member, timeout=10).status_code == 200
                              for _ in range(4)), MAX_LAG + 20, "the lagging replica kept serving reads")
        assert time.monotonic() - written > MAX_LAG - 3  # and not much before it lagged that far
        exported = httpx.get(f"{api}/metrics").text  # the alert compares the lag with the setting
        assert float(re.search(r"^db_replica_max_lag_seconds (\S+)$", exported, re.M).group(1)) == MAX_LAG
        status, seen = _replica_state(api)
        assert status == 200 and seen["state"] == "lagging" and seen["lag_seconds"] > MAX_LAG, seen
        # The gauge holds the probe's own measure, taken once a second: the next look passes MAX_LAG.
        _wait_for(lambda: _metric(httpx.get(f"{api}/metrics").text, "db_replica_lag_seconds", server="replica1")
                  > MAX_LAG, 3, "the lag gauge never passed REPLICA_MAX_LAG_SECONDS")
    finally:
        with _superuser_on(replica).connect() as conn:
            conn.execute(sa.text("SELECT pg_wal_replay_resume()"))
    _wait_for(lambda: _replica_state(api)[1]["state"] == "ok", 30, "the replica did not come back")
    assert httpx.get(f"{api}/branches/{branch}", headers=member).status_code == 200


def test_a_stopped_replica_is_skipped_and_taken_back_when_it_returns(api, servers, member):
    _primary, replica, _runtime = servers
    _wait_for(lambda: _replica_state(api)[1]["state"] == "ok", 30, "the replica is not serving")
    replica.stop()
    try:
        started = time.monotonic()
        statuses = [httpx.get(f"{api}/branches", headers=member, timeout=10).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert time.monotonic() - started < 20
        status, seen = _wait_for(lambda: (s := _replica_state(api))[1]["state"] == "down" and s, 15,
                                 "/ready does not report the stopped replica")
        assert status == 200, seen
        metrics = httpx.get(f"{api}/metrics").text
        assert _metric(metrics, "db_up", server="replica1") == 0
        assert _metric(metrics, "db_up", server="primary") == 1
    finally:
        replica.start()
    _wait_for(lambda: _replica_state(api)[1]["state"] == "ok", 30, "the restarted replica is not taken back")


def test_each_pool_is_reported(api, member):
    httpx.get(f"{api}/branches", headers=member)
    metrics = httpx.get(f"{api}/metrics").text
    for pool in ("writer", "reader", "replica1"):
        _metric(metrics, "db_pool_connections", pool=pool, state="idle")
    assert _metric(metrics, "db_up", server="replica1") in (0, 1)
    body = httpx.get(f"{api}/ready").json()
    assert body["status"] == "ok" and [r["name"] for r in body["replicas"]] == ["replica1"]


def test_a_read_only_server_answers_503_never_500(servers, member, email):
    """DATABASE_URL pointed at a replica by mistake (or at a primary being failed over)."""
    _primary, replica, _runtime = servers
    process, base = spawn_server(_replica_runtime_url(replica))
    try:
        ready = httpx.get(f"{base}/ready")
        assert ready.status_code == 503 and ready.json()["database"] == "read_only"
        write = httpx.post(f"{base}/branches", headers=member, json={"name": "Nowhere"})
        assert write.status_code == 503 and write.json()["error"]["code"] == "SERVICE_UNAVAILABLE", write.text
        login = httpx.post(f"{base}/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 503, login.text  # a login writes its session
        assert httpx.get(f"{base}/branches", headers=member).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
