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
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('clinic-api', 'clinic-api-webhooks') "
            "AND datname = current_database() AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        )).scalar_one()
    assert leftover == 0


def test_sigterm_answers_every_request_on_keep_alive_connections_and_resets_none(database_url, org_a):
    """Clients that keep their connections open and keep sending: at SIGTERM each request the
    server read is answered, the last one on each connection with `Connection: close`, and an idle
    connection is closed with an end of stream, never a reset (uvicorn closed idle keep-alive
    connections at once, and a request already on its way met a reset)."""
    import random

    from tests.rawhttp import Reader, connect, request_bytes

    server, base = spawn_server(database_url, production=True, stderr=subprocess.PIPE, APP_ENV="production",
                                WEB_CONCURRENCY="1", WEBHOOK_WORKER="false")
    request = request_bytes("GET", "/patients?pageSize=5", org_a.headers)
    try:
        sockets = [connect(base, timeout=30) for _ in range(16)]
        readers = [Reader(sock) for sock in sockets]
        for sock, reader in zip(sockets, readers):  # each connection accepted and served once
            sock.sendall(request)
            assert reader.answer().status == 200
        idle = connect(base, timeout=30)
        idle.sendall(request)
        Reader(idle).answer()
        outcomes = []

        def client(sock, reader):
            answered = 0
            while True:
                try:
                    sock.sendall(request)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    outcomes.append(("refused before sending", type(exc).__name__, answered))
                    return
                try:
                    answer = reader.answer()
                except EOFError:
                    outcomes.append(("unanswered", "eof", answered))
                    return
                except ConnectionResetError:
                    outcomes.append(("unanswered", "reset", answered))
                    return
                answered += 1
                if answer.status != 200:
                    outcomes.append(("status", answer.status, answered))
                    return
                if answer.headers.get("connection") == "close":
                    outcomes.append(("closed after an answer", answer.status, answered))
                    return
                time.sleep(random.uniform(0.05, 0.4))  # idle most of the time, as browsers are

        threads = [threading.Thread(target=client, args=pair) for pair in zip(sockets, readers)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        idle_reader = Reader(idle)
        idle.settimeout(30)
        try:
            idle_end = "eof" if idle.recv(1) == b"" else "data"
        except ConnectionResetError:
            idle_end = "reset"
        code = server.wait(timeout=40)
        assert code == 0, server.stderr.read().decode()[-3000:]
        assert idle_end == "eof" and idle_reader.buffer == b""
        assert len(outcomes) == 16
        assert {outcome[0] for outcome in outcomes} == {"closed after an answer"}, outcomes
    finally:
        if server.poll() is None:
            server.kill()
