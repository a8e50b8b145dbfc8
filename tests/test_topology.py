"""The deployment an operator runs, started for real on loopback: a PostgreSQL 15 primary and its
streaming replica (``pg_basebackup -R``), PgBouncer in transaction mode with its defaults in front
of the primary, Redis for the rate limits, and two ``clinic-api serve`` instances of two workers
each, reached in turn as a load balancer would. Everything stops when the module ends.
"""
from __future__ import annotations

import contextlib
import itertools
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa

from models import database
from tests.conftest import PASSWORD, spawn_server
from tests.services import PgBouncer, PostgresServer, Redis, create_org, migrated_database

MAX_LAG = 8  # REPLICA_MAX_LAG_SECONDS of both instances
RATE_LIMIT = 100  # per user per minute, the documented default, shared through Redis
ROLE = database.EMBEDDED_RUNTIME_ROLE
PACE_SECONDS = 0.1  # between two requests of one load client


@dataclass
class Deployment:
    primary: PostgresServer
    replica: PostgresServer
    owner_url: str  # the primary itself, as the schema owner
    runtime_url: str  # the primary itself, as the runtime role
    instances: list[str]

    def superuser(self, cluster: PostgresServer):
        return sa.create_engine(database.sqlalchemy_url(cluster.url(database="clinic")), poolclass=sa.pool.NullPool,
                                isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def deployment(settings):
    with contextlib.ExitStack() as stack:  # stopped in the reverse order of their start
        primary = PostgresServer.primary()
        stack.callback(primary.remove)
        owner, runtime = migrated_database(primary, settings)
        replica = primary.replica()
        stack.callback(replica.remove)
        # Transaction mode; of its defaults, only the two that decide what a primary outage costs
        # (docs/operations.md#pgbouncer): a query waits at most 5 s for a server connection
        # (120 s by default), and a failed server is tried again after 1 s (15 s by default).
        bouncer = PgBouncer("127.0.0.1", primary.port, users=[ROLE], query_wait_timeout="5",
                            server_login_retry="1")
        stack.callback(bouncer.stop)
        redis = Redis()
        stack.callback(redis.stop)
        instances = []
        for _ in range(2):
            metrics = stack.enter_context(tempfile.TemporaryDirectory(prefix="clinic-metrics-"))
            process, base = spawn_server(
                bouncer.url(ROLE, "clinic"), production=True, WEB_CONCURRENCY="2", WEBHOOK_WORKER="false",
                PROMETHEUS_MULTIPROC_DIR=metrics,
                DATABASE_REPLICA_URLS=replica.url(user=ROLE, database="clinic"),
                REPLICA_MAX_LAG_SECONDS=str(MAX_LAG), DB_POOL_SIZE="5", DB_MAX_OVERFLOW="2",
                DB_CONNECT_TIMEOUT_S="2", RATE_LIMIT_ENABLED="true", RATE_LIMIT_DEFAULT=f"{RATE_LIMIT}/minute",
                RATE_LIMIT_LOGIN="1000/minute", RATE_LIMIT_STORAGE_URI=redis.url)
            stack.callback(_terminate, process)
            instances.append(base)
        yield Deployment(primary, replica, owner, runtime, instances)


def _terminate(process) -> None:
    process.terminate()
    process.wait(timeout=30)


class Client:
    """One client session (its cookies included) whose requests go to the instances in turn."""

    def __init__(self, instances: list[str], headers: dict | None = None):
        self.http = httpx.Client(headers=headers or {}, timeout=30)
        self.next = itertools.cycle(instances)

    def __getattr__(self, method):
        return lambda path, **kwargs: self.http.request(method.upper(), next(self.next) + path, **kwargs)

    def close(self):
        self.http.close()


def _member(deployment, settings) -> tuple[dict, dict, str]:
    """(ids, the login's tokens, email) of a new organization's admin, logged in through the API."""
    email = f"topology-{uuid.uuid4().hex[:10]}@example.com"
    ids = create_org(deployment.runtime_url, settings, email, PASSWORD)
    login = httpx.post(f"{deployment.instances[0]}/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
    assert login.status_code == 200, login.text
    return ids, login.json()["data"], email


def _bearer(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return value


def _replicas_ok(deployment) -> bool:
    bodies = [httpx.get(f"{base}/ready", timeout=10).json() for base in deployment.instances]
    return all(body["status"] == "ok" and body["replicas"][0]["state"] == "ok" for body in bodies)


def test_a_full_client_scenario_through_pgbouncer(deployment, settings):
    _wait_for(lambda: _replicas_ok(deployment), 30, "an instance is not ready with its replica")
    ids, tokens, _email = _member(deployment, settings)
    api = Client(deployment.instances, _bearer(tokens))
    try:
        created = api.post("/patients", json={"branch_id": ids["branch_id"], "name": "Ada Lovelace"})
        assert created.status_code == 201, created.text
        patient = created.json()["data"]["id"]
        read = api.get(f"/patients/{patient}")
        assert read.status_code == 200 and read.json()["data"]["name"] == "Ada Lovelace"
        changed = api.patch(f"/patients/{patient}", json={"name": "Augusta King"},
                            headers={"If-Match": read.headers["ETag"]})
        assert changed.status_code == 200, changed.text
        assert api.get("/patients", params={"search": "Augusta"}).json()["data"]["total"] == 1
        branch = api.post("/branches", json={"name": "East Wing"})
        assert branch.status_code == 201, branch.text
        # read back through the other instance, from the replica or (until it has the write) the primary
        assert api.get(f"/branches/{branch.json()['data']['id']}").status_code == 200
        assert api.get("/branches").json()["data"]["total"] == 2
        assert api.delete(f"/patients/{patient}").status_code == 204
        assert api.get(f"/patients/{patient}").status_code == 404
        refreshed = api.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        again = refreshed.json()["data"]["refresh_token"]
        assert api.post("/auth/logout", json={"refresh_token": again}).status_code == 204
        assert api.post("/auth/refresh", json={"refresh_token": again}).status_code == 401
    finally:
        api.close()


def test_a_row_held_for_update_answers_409_within_the_lock_timeout(deployment, settings):
    ids, tokens, _email = _member(deployment, settings)
    api = Client(deployment.instances, _bearer(tokens))
    holder = sa.create_engine(database.sqlalchemy_url(deployment.owner_url), poolclass=sa.pool.NullPool)
    try:
        patient = api.post("/patients", json={"branch_id": ids["branch_id"], "name": "Busy Row"}).json()["data"]["id"]
        with holder.connect() as conn:
            conn.execute(sa.text("SELECT 1 FROM patient WHERE id = :id FOR UPDATE"), {"id": patient})
            started = time.monotonic()
            response = api.patch(f"/patients/{patient}", json={"name": "Waiting"})
            elapsed = time.monotonic() - started
            conn.rollback()
        assert response.status_code == 409 and response.json()["error"]["code"] == "CONFLICT", response.text
        assert elapsed < settings.db_lock_timeout_ms / 1000 + 1, elapsed
    finally:
        holder.dispose()
        api.close()


def test_reads_come_from_the_replica_and_a_lagging_one_is_skipped(deployment, settings):
    _wait_for(lambda: _replicas_ok(deployment), 30, "an instance is not ready with its replica")
    _ids, tokens, _email = _member(deployment, settings)
    writer = Client(deployment.instances, _bearer(tokens))  # keeps the read-your-writes cookie
    stranger = Client(deployment.instances, _bearer(tokens))  # the same member, never writing
    with deployment.superuser(deployment.replica).connect() as conn:
        conn.execute(sa.text("SELECT pg_wal_replay_pause()"))
    try:
        created = writer.post("/branches", json={"name": "West Wing"})
        written = time.monotonic()
        assert created.status_code == 201, created.text
        branch = created.json()["data"]["id"]
        # A client without the cookie is served by the replica, which has not replayed the write.
        stale = [stranger.get(f"/branches/{branch}").status_code for _ in range(8)]
        assert 404 in stale, stale
        # The writer reads its write on either instance: its cookie sends it to the primary.
        assert [writer.get(f"/branches/{branch}").status_code for _ in range(4)] == [200] * 4
        # More than REPLICA_MAX_LAG_SECONDS behind, the replica is skipped by every worker.
        _wait_for(lambda: all(stranger.get(f"/branches/{branch}").status_code == 200 for _ in range(8)),
                  MAX_LAG + 20, "the lagging replica kept serving reads")
        assert time.monotonic() - written > MAX_LAG - 3
    finally:
        with deployment.superuser(deployment.replica).connect() as conn:
            conn.execute(sa.text("SELECT pg_wal_replay_resume()"))
        writer.close()
        stranger.close()
    _wait_for(lambda: _replicas_ok(deployment), 30, "the replica did not catch up")


def _load(deployment, members: list[dict], stop: threading.Event, results: list, threads: int = 4) -> list:
    """Clients creating patients (and reading them back) until ``stop``: (status, id) per request."""
    def client(number: int) -> None:
        api = Client(deployment.instances[number % 2:] + deployment.instances[:number % 2])
        for turn in itertools.count():
            if stop.wait(PACE_SECONDS):  # each member stays well under its rate limit
                break
            ids, tokens = members[(number + turn) % len(members)]
            try:
                if turn % 2:
                    answer = api.get("/branches", headers=_bearer(tokens))
                    results.append((answer.status_code, None))
                else:
                    answer = api.post("/patients", headers=_bearer(tokens),
                                      json={"branch_id": ids["branch_id"], "name": f"Load {number}-{turn}"})
                    created = answer.json()["data"]["id"] if answer.status_code == 201 else None
                    results.append((answer.status_code, created))
            except httpx.HTTPError as exc:  # no answer at all: never acceptable
                results.append((type(exc).__name__, None))
        api.close()

    started = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for thread in started:
        thread.start()
    return started


def test_a_stopped_replica_is_skipped_while_reads_continue(deployment, settings):
    _wait_for(lambda: _replicas_ok(deployment), 30, "an instance is not ready with its replica")
    members = [_member(deployment, settings)[:2] for _ in range(4)]
    stop, results = threading.Event(), []
    threads = _load(deployment, members, stop, results, threads=2)
    try:
        time.sleep(2)
        deployment.replica.stop()
        time.sleep(6)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        deployment.replica.start()
    statuses = [status for status, _ in results]
    assert statuses and set(statuses) <= {200, 201}, sorted(set(map(str, statuses)))
    _wait_for(lambda: _replicas_ok(deployment), 30, "the restarted replica is not taken back")


def test_a_primary_restart_under_load_costs_only_503s_and_no_acknowledged_write(deployment, settings):
    _wait_for(lambda: _replicas_ok(deployment), 30, "an instance is not ready with its replica")
    members = [_member(deployment, settings)[:2] for _ in range(16)]
    stop, results = threading.Event(), []
    threads = _load(deployment, members, stop, results)
    try:
        time.sleep(3)
        before = len(results)
        deployment.primary.stop("immediate")  # as a crash: recovery at the next start
        # Longer than PgBouncer's query_wait_timeout: the writes meanwhile fail, the reads the
        # replica serves do not.
        time.sleep(8)
        deployment.primary.start()
        # Recovered without touching the API: every instance ready again, then requests succeed.
        _wait_for(lambda: all(httpx.get(f"{base}/ready", timeout=10).status_code == 200
                              for base in deployment.instances), 60, "an instance did not recover")
        recovered = len(results)
        _wait_for(lambda: len(results) >= recovered + 40, 60, "no traffic after the recovery")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    statuses = [status for status, _ in results]
    assert before > 0 and set(statuses) <= {200, 201, 503}, sorted(set(map(str, statuses)))
    assert 503 in statuses  # the outage was seen
    tail = statuses[recovered + 10:]
    assert tail and set(tail) <= {200, 201}, tail
    acknowledged = [created for status, created in results if status == 201]
    assert acknowledged
    engine = sa.create_engine(database.sqlalchemy_url(deployment.owner_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT count(*) FROM patient WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                 {"ids": acknowledged}).scalar()
    finally:
        engine.dispose()
    assert found == len(acknowledged)


def test_the_rate_limit_holds_in_aggregate_across_both_instances(deployment, settings):
    _ids, tokens, _email = _member(deployment, settings)
    statuses: list[int] = []

    def client(number: int) -> None:
        api = Client(deployment.instances[number % 2:] + deployment.instances[:number % 2], _bearer(tokens))
        for _ in range((RATE_LIMIT + 12) // 4):
            statuses.append(api.get("/branches").status_code)
        api.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # With each worker counting alone, 4 x 100 would pass; Redis makes it 100 in all.
    assert statuses.count(200) == RATE_LIMIT and statuses.count(429) == len(statuses) - RATE_LIMIT, statuses
