"""SIGTERM: requests in flight finish, the process exits, no session is left idle in a transaction."""
import signal
import subprocess
import threading
import time

import httpx
import sqlalchemy as sa

from tests.conftest import spawn_server


def test_sigterm_drains_requests_and_leaves_no_open_transactions(database_url, org_a, engine):
    server, base = spawn_server(database_url, production=True, stderr=subprocess.PIPE,
                                APP_ENV="production", WEB_CONCURRENCY="1")
    try:
        # Warm the pool first: under a loaded test machine, opening ten connections at once can
        # outlast DB_CONNECT_TIMEOUT_S, which is a (correct) 503 but not what this test is about.
        with httpx.Client(base_url=base, headers=org_a.headers, timeout=30) as warm:
            for _ in range(10):
                warm.get("/patients?pageSize=100")
        results = []

        def call():
            try:
                r = httpx.get(f"{base}/patients?pageSize=100", headers=org_a.headers, timeout=30)
                results.append(r.status_code if r.status_code == 200 else (r.status_code, r.text))
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                # Not yet read by the server when it stopped accepting: closed without an answer,
                # so the client (or the load balancer) may safely retry it.
                results.append("not started")

        threads = [threading.Thread(target=call) for _ in range(30)]
        for thread in threads:
            thread.start()
        # Signal once the server is busy with them: the first answer shows it has read requests
        # (a worker without handler threads reads the others while it finishes the first).
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.005)
        server.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join()
        code = server.wait(timeout=40)
        assert code == 0, server.stderr.read().decode()[-3000:]
        assert set(results) <= {200, "not started"}, results
        assert 200 in results
    finally:
        if server.poll() is None:
            server.kill()
    with engine.connect() as conn:
        leftover = conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'clinic-api' "
            "AND datname = current_database() AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        )).scalar_one()
    assert leftover == 0
