"""Through PgBouncer in transaction mode with its default settings (Debian's `pgbouncer`), the API
works as directly, and the runtime role's timeouts still hold."""
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from models import accounts, database
from tests.conftest import PASSWORD, spawn_server
from tests.services import PGBOUNCER, PgBouncer

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(PGBOUNCER),
                                reason="pgbouncer not installed (Debian package 'pgbouncer'); .ci/run installs it")


@pytest.fixture(scope="module")
def pgbouncer(database_url):
    server = make_url(database_url)
    bouncer = PgBouncer(server.host or server.query["host"],
                        server.port or 5432, users=[server.username])
    yield bouncer.url(server.username, server.database)
    bouncer.stop()


@pytest.fixture(scope="module")
def api(pgbouncer):
    process, base = spawn_server(pgbouncer, production=True, WEB_CONCURRENCY="2")
    yield base
    process.terminate()
    process.wait(timeout=30)


def _login(base, app) -> tuple[dict, str]:
    """(headers of a new organization's admin, its branch id)."""
    email = f"bouncer-{uuid.uuid4().hex[:8]}@example.com"
    ids = accounts.create_organization(name="Bouncer", branch_name="Main", admin_email=email, admin_password=PASSWORD)
    token = httpx.post(f"{base}/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]["access_token"]
    return {"Authorization": f"Bearer {token}"}, ids["branch_id"]


def test_a_client_scenario_through_pgbouncer(api, app):
    headers, branch = _login(api, app)
    with httpx.Client(base_url=api, headers=headers, timeout=10) as http:
        assert http.get("/ready").status_code == 200
        created = http.post("/patients", json={"branch_id": branch, "name": "Ada Lovelace"})
        assert created.status_code == 201, created.text
        patient = created.json()["data"]["id"]
        assert http.get(f"/patients/{patient}").json()["data"]["name"] == "Ada Lovelace"
        assert http.patch(f"/patients/{patient}", json={"name": "Augusta King"}).status_code == 200
        assert http.get("/patients", params={"search": "Augusta"}).json()["data"]["total"] == 1
        assert http.delete(f"/patients/{patient}").status_code in (200, 204)
        assert http.get(f"/patients/{patient}").status_code == 404


def test_timeouts_hold_through_pgbouncer(pgbouncer, settings):
    engine = sa.create_engine(database.sqlalchemy_url(pgbouncer), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        shown = {name: conn.execute(sa.text(f"SHOW {name}")).scalar()
                 for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")}
    engine.dispose()
    assert shown == {"statement_timeout": f"{settings.db_statement_timeout_ms // 1000}s",
                     "lock_timeout": f"{settings.db_lock_timeout_ms // 1000}s",
                     "idle_in_transaction_session_timeout": f"{settings.db_idle_in_transaction_timeout_ms // 1000}s"}


def test_a_row_held_for_update_makes_a_patch_through_pgbouncer_a_409(api, app, owner_url, settings):
    headers, branch = _login(api, app)
    patient = httpx.post(f"{api}/patients", headers=headers,
                         json={"branch_id": branch, "name": "Busy Row"}).json()["data"]["id"]
    holder = sa.create_engine(database.sqlalchemy_url(owner_url), poolclass=sa.pool.NullPool)
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT 1 FROM patient WHERE id = :id FOR UPDATE"), {"id": patient})
        started = time.monotonic()
        response = httpx.patch(f"{api}/patients/{patient}", headers=headers, json={"name": "Waiting"},
                               timeout=30)
        elapsed = time.monotonic() - started
        conn.rollback()
    holder.dispose()
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "CONFLICT"
    assert elapsed < settings.db_lock_timeout_ms / 1000 + 1, elapsed


def test_prepared_statements_turn_off_when_the_pooler_moves_a_client(pgbouncer, settings, caplog):
    """A transaction-mode pooler gives a client another server connection whenever the one it had
    is busy: the prepared statement is missing there, the statement goes again as text, and the
    pool prepares nothing more (models/prepared.py)."""
    from models.prepared import prepared

    statement = prepared(sa.select(sa.bindparam("n", type_=sa.Integer) + sa.literal_column("1")))
    pools = database.create_pools(pgbouncer, settings)
    try:
        with pools.reader.connect() as mover, pools.writer.connect() as holder:
            assert mover.execute(statement, {"n": 1}).scalar_one() == 2  # prepared on the server it had
            assert mover.connection.dbapi_connection.switch.on
            holder.execute(sa.text("SELECT 1"))  # a transaction: it holds that server now (LIFO)
            with caplog.at_level("WARNING", logger="models.prepared"):
                assert mover.execute(statement, {"n": 2}).scalar_one() == 3
            assert not mover.connection.dbapi_connection.switch.on
            assert "prepared statements are off for the reader pool" in caplog.text
            assert [mover.execute(statement, {"n": n}).scalar_one() for n in range(3, 9)] == list(range(4, 10))
    finally:
        pools.dispose()


def test_a_served_api_under_concurrent_load_through_pgbouncer_answers_every_request(pgbouncer, app, tmp_path):
    """Concurrent requests spread each worker's client connections over PgBouncer's server
    connections: a get whose statement was prepared on one server connection reaches another.
    Every answer stays right, and the served log says that preparing stopped."""
    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        process, base = spawn_server(pgbouncer, production=True, stderr=stderr, WEB_CONCURRENCY="2",
                                     LOG_LEVEL="WARNING")
    try:
        headers, branch = _login(base, app)
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            created = [http.post("/patients", json={"branch_id": branch, "name": f"Pooled {n}"}).json()["data"]["id"]
                       for n in range(8)]

        def client_run(worker: int) -> list[int]:
            problems = []
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                for n in range(30):
                    patient = created[(worker + n) % len(created)]
                    answer = http.get(f"/patients/{patient}")
                    if answer.status_code != 200 or answer.json()["data"]["id"] != patient:
                        problems.append(answer.status_code)
                    if n % 10 == 0:
                        made = http.post("/patients", json={"branch_id": branch, "name": f"More {worker} {n}"})
                        if made.status_code != 201:
                            problems.append(made.status_code)
            return problems

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            problems = [p for found in pool.map(client_run, range(8)) for p in found]
        assert problems == []
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "prepared statements are off" in log.read_text()
