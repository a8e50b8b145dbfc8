"""A frozen database (every process of a PostgreSQL this test started, SIGSTOPped) never freezes
`clinic-api serve`: /health answers at once, /ready says 503 within 1.5 s, API requests answer 503
with Retry-After within DB_STATEMENT_TIMEOUT_MS plus a second, and all recover when it thaws."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import httpx
import pytest

import config
from models import database
from tests.conftest import PASSWORD, TEST_ENV, spawn_server
from tests.rawhttp import exchange, request_bytes
from tests.services import PostgresCluster

STATEMENT_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def frozen_setup():
    cluster = PostgresCluster()
    try:
        owner = cluster.url()
        runtime = database.runtime_url(owner)
        database.migrate(owner, runtime_role=database.EMBEDDED_RUNTIME_ROLE,
                         settings=config.load({**TEST_ENV, "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS)}))
        email = "frozen-admin@example.com"
        created = subprocess.run(
            [sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))", "create-org",
             "--name", "Frozen", "--branch-name", "Main", "--admin-email", email],
            env={**os.environ, **TEST_ENV, "DATABASE_URL": runtime, "ADMIN_PASSWORD": PASSWORD},
            cwd=str(config.ROOT), capture_output=True, text=True, timeout=60, check=True)
        ids = json.loads(created.stdout.strip().splitlines()[-1])
        # Two workers (the default on this 2-core machine) with their default 4 handler threads.
        process, base = spawn_server(runtime, production=True, APP_ENV="production", WEB_CONCURRENCY="2",
                                     DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS), DB_POOL_SIZE="10",
                                     WEBHOOK_WORKER="false", REQUEST_THREADS="")
        try:
            login = httpx.post(f"{base}/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['data']['access_token']}"}
            yield cluster, base, headers, ids
        finally:
            process.terminate()
            process.wait(timeout=40)
    finally:
        cluster.stop()


def _timed(base, method, path, headers=None, body=None):
    """Raw HTTP on a new connection (the kernel picks the worker): the client's own cost stays
    far below what is measured, even with a dozen callers in this process."""
    raw = request_bytes(method, path, {**(headers or {}), **({"Content-Type": "application/json"} if body else {})},
                        json.dumps(body).encode() if body else None)
    started = time.monotonic()
    try:
        answer = exchange(base, raw, timeout=30)
    except OSError as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, answer


def test_a_frozen_database_freezes_no_worker(frozen_setup):
    cluster, base, headers, ids = frozen_setup
    # Both workers have open connections in their pools before the freeze.
    with httpx.Client(base_url=base, headers=headers, timeout=30) as warm:
        for _ in range(20):
            assert warm.get("/patients").status_code == 200
    cluster.signal_all(signal.SIGSTOP)
    cluster.signal_all(signal.SIGSTOP)  # a backend forked meanwhile, now that the postmaster is stopped
    try:
        api = []
        patient = {"branch_id": ids["branch_id"], "name": "Frozen Out"}

        def call(i):
            if i % 3 == 0:
                api.append(_timed(base, "POST", "/patients", headers, patient))
            else:
                api.append(_timed(base, "GET", "/patients", headers))

        # More requests than the two workers have threads: some wait for one as well.
        callers = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for caller in callers:
            caller.start()
        time.sleep(0.5)  # every handler thread is now waiting on the frozen server
        health = [_timed(base, "GET", "/health") for _ in range(10)]
        ready = _timed(base, "GET", "/ready")
        for caller in callers:
            caller.join()
    finally:
        cluster.signal_all(signal.SIGCONT)

    health_times = [seconds for seconds, response in health]
    print(f"frozen: /health {sorted(round(t * 1000) for t in health_times)} ms, /ready {ready[0]:.2f} s, "
          f"API {sorted(round(t, 2) for t, _ in api)} s")
    assert all(answer.status == 200 for _, answer in health), health
    assert statistics.median(health_times) < 0.1 and max(health_times) < 0.5, health_times

    seconds, answer = ready
    assert answer.status == 503 and answer.json() == {"status": "unavailable", "database": "unreachable"}
    assert seconds < 1.5, seconds

    limit = STATEMENT_TIMEOUT_MS / 1000 + 1
    assert len(api) == 12
    for seconds, answer in api:
        assert not isinstance(answer, Exception), answer
        assert answer.status == 503, answer.body
        assert answer.error["code"] == "SERVICE_UNAVAILABLE"
        assert answer.headers["retry-after"] == "2"
        assert seconds < limit, (seconds, sorted(s for s, _ in api))

    # Thawed: the cut connections are replaced and the same requests succeed again.
    deadline = time.monotonic() + 20
    statuses = []
    while time.monotonic() < deadline:
        statuses = [httpx.get(f"{base}/patients", headers=headers, timeout=30).status_code for _ in range(6)]
        if statuses == [200] * 6:
            break
        time.sleep(0.5)
    assert statuses == [200] * 6
    assert httpx.get(f"{base}/ready", timeout=30).status_code == 200
