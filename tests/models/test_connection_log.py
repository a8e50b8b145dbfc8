"""A database the API cannot reach is named in the log: one line per pool per interval, with
host, port, database and the server's (or the network's) message."""
import json

import httpx

from tests.conftest import spawn_server
from tests.services import free_port


def test_a_failed_connect_logs_one_line_naming_the_target(tmp_path, org_a):
    port = free_port()  # nothing listens there
    errors = tmp_path / "stderr"
    with errors.open("w") as sink:
        process, base = spawn_server(f"postgresql://clinic_api@127.0.0.1:{port}/clinic_ward", stderr=sink,
                                     DB_CONNECT_TIMEOUT_S="2")
        try:
            statuses = [httpx.get(f"{base}/patients", headers=org_a.headers, timeout=10).status_code
                        for _ in range(5)]
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert statuses == [503] * 5
    lines = [json.loads(line) for line in errors.read_text().splitlines() if "database connection failed" in line]
    assert len(lines) == 1, lines
    message = lines[0]["message"]
    assert f"host=127.0.0.1 port={port} database=clinic_ward user=clinic_api" in message
    assert "Connection refused" in message
