"""A database the API cannot reach is named in the log: one line per pool per interval, with
host, port, database and the server's (or the network's) message."""
import json
import re
import time

import httpx

from tests.conftest import spawn_server
from tests.services import PostgresServer, free_port, migrated_database


def test_a_failed_connect_logs_one_line_naming_the_target(tmp_path, org_a):
    port = free_port()  # nothing listens there
    errors = tmp_path / "stderr"
    with errors.open("w") as sink:
        started = time.monotonic()
        process, base = spawn_server(f"postgresql://clinic_api@127.0.0.1:{port}/clinic_ward", stderr=sink,
                                     DB_CONNECT_TIMEOUT_S="2")
        try:
            statuses = [httpx.get(f"{base}/patients", headers=org_a.headers, timeout=10).status_code
                        for _ in range(5)]
        finally:
            process.terminate()
            process.wait(timeout=30)
        elapsed = time.monotonic() - started
    assert statuses == [503] * 5
    lines = [json.loads(line) for line in errors.read_text().splitlines() if "database connection failed" in line]
    # The probe fails once a second and every request fails too: still one line per 10 s.
    assert 1 <= len(lines) <= 1 + elapsed // 10, (elapsed, lines)
    message = lines[0]["message"]
    assert f"host=127.0.0.1 port={port} database=clinic_ward user=clinic_api" in message
    assert "Connection refused" in message


def _primary_up(base) -> float | None:
    found = re.search(r'^db_up\{server="primary"\} (\S+)$', httpx.get(f"{base}/metrics", timeout=10).text, re.M)
    return float(found.group(1)) if found else None


def _until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return value


def test_an_idle_instance_sees_its_database_go_down_and_come_back(tmp_path, settings):
    """No request reaches the API while its database is down: the probe alone sets db_up and logs."""
    cluster = PostgresServer.primary()
    errors = tmp_path / "stderr"
    try:
        _owner, runtime = migrated_database(cluster, settings)
        with errors.open("w") as sink:
            process, base = spawn_server(runtime, production=True, stderr=sink, WEB_CONCURRENCY="2",
                                         WEBHOOK_WORKER="false")
        try:
            _until(lambda: _primary_up(base) == 1, 20, "the probe never saw the database up")
            cluster.stop()

            def failures():
                return [json.loads(line)["message"] for line in errors.read_text().splitlines()
                        if "database connection failed" in line]

            first = _until(failures, 20, "no line names the lost database")
            time.sleep(5)  # still no request; each worker logs at most once per 10 s
            lines = failures()
            assert len(first) <= len(lines) <= 2, lines
            for line in lines:
                target, _, message = line.partition("): ")
                assert f"host=127.0.0.1 port={cluster.port} database=clinic user=clinic_api" in target
                assert message.strip(), line
            _until(lambda: _primary_up(base) == 0, 15, "db_up stayed 1 with the database down")
            cluster.start()
            _until(lambda: _primary_up(base) == 1, 20, "db_up did not return to 1")
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        cluster.remove()
