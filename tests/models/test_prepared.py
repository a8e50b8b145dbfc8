"""Statements marked ``prepared`` are planned once per connection, outside transactions only, and
anything the server will not keep prepared runs as text with the same answer (models/prepared.py).
The pooler that moves clients between server connections is in tests/test_pgbouncer.py."""
import collections
import dataclasses

import pytest
import sqlalchemy as sa

from models import database
from models.prepared import prepared
from tests.factories import build_world

pytestmark = pytest.mark.usefixtures("app")


@pytest.fixture
def pools(owner_url, settings):
    made = database.create_pools(owner_url, settings)
    yield made
    made.dispose()


def _kept(conn) -> dict[str, tuple[str, int, int]]:
    """The statements this connection's server session has prepared: name -> (text, generic, custom)."""
    rows = conn.exec_driver_sql("SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements")
    return {name: (text, generic, custom) for name, text, generic, custom in rows}


def _kept_in_pool(engine) -> list[dict[str, tuple[str, int, int]]]:
    """``_kept`` of each idle connection of ``engine``, each checked against what the connection
    itself believes it has prepared."""
    connections = [engine.connect() for _ in range(engine.pool.checkedin())]
    try:
        kept = []
        for conn in connections:
            server_side = _kept(conn)
            assert conn.connection.dbapi_connection.prepared == set(server_side)
            kept.append(server_side)
        return kept
    finally:
        for conn in connections:
            conn.close()


NEXT = prepared(sa.select(sa.bindparam("n", type_=sa.Integer) + sa.literal_column("1")))


def test_a_marked_statement_is_planned_once_per_connection(pools):
    with pools.reader.connect() as conn:
        assert [conn.execute(NEXT, {"n": n}).scalar_one() for n in range(8)] == list(range(1, 9))
        kept = _kept(conn)
        assert conn.connection.dbapi_connection.prepared == set(kept)
    [(text, generic, custom)] = kept.values()
    assert text.startswith("PREPARE clinic_") and "$1" in text
    # PostgreSQL plans the first executions for their values, then keeps one generic plan.
    assert custom + generic == 8 and generic >= 1


def test_a_percent_sign_in_the_text_stays_one(pools):
    share = sa.text("SELECT '100%' || :x || '%(x)s'").execution_options(prepared=True)
    with pools.reader.connect() as conn:
        assert [conn.execute(share, {"x": "a"}).scalar_one() for _ in range(2)] == ["100%a%(x)s"] * 2
        assert len(_kept(conn)) == 1


def test_a_connection_keeps_a_bounded_number_of_statements(pools, monkeypatch):
    monkeypatch.setattr("models.prepared.PER_CONNECTION", 2)
    shapes = [prepared(sa.select(sa.bindparam("n", type_=sa.Integer) + sa.literal_column(str(k))))
              for k in range(3)]
    with pools.reader.connect() as conn:
        assert [conn.execute(shape, {"n": 1}).scalar_one() for shape in shapes * 2] == [1, 2, 3] * 2
        assert len(_kept(conn)) == 2


def test_db_prepared_statements_false_sends_text_only(owner_url, settings):
    pools = database.create_pools(owner_url, dataclasses.replace(settings, db_prepared_statements=False))
    try:
        with pools.reader.connect() as conn:
            assert [conn.execute(NEXT, {"n": n}).scalar_one() for n in range(3)] == [1, 2, 3]
            assert _kept(conn) == {}
    finally:
        pools.dispose()


def test_a_statement_inside_a_transaction_is_sent_as_text(pools):
    with pools.writer.begin() as conn:
        assert conn.execute(NEXT, {"n": 41}).scalar_one() == 42
        assert _kept(conn) == {}


def test_a_statement_the_server_cannot_prepare_runs_as_text(pools):
    # "$1 IS NULL" gives the server no type for $1: PREPARE fails, the text does not.
    unknown = prepared(sa.select(sa.bindparam("x").is_(None)))
    with pools.reader.connect() as conn:
        assert [conn.execute(unknown, {"x": value}).scalar_one() for value in (None, "a", None)] == [True, False, True]
        assert _kept(conn) == {}


INSERT_PROBE = sa.text("INSERT INTO prepared_probe (v) VALUES (:v)").execution_options(prepared=True)


def test_an_error_of_the_statement_itself_is_raised_and_not_sent_again(pools):
    with pools.reader.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE prepared_probe (v int UNIQUE, n serial)")
        conn.execute(INSERT_PROBE, {"v": 1})
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(INSERT_PROBE, {"v": 1})
        conn.execute(INSERT_PROBE, {"v": 2})
        # Every attempt draws a number: three sends, so the failed one went once.
        assert conn.exec_driver_sql("SELECT last_value FROM prepared_probe_n_seq").scalar_one() == 3
        assert conn.exec_driver_sql("SELECT array_agg(v ORDER BY v) FROM prepared_probe").scalar_one() == [1, 2]


def test_a_first_run_that_fails_leaves_the_statement_prepared_and_in_use(pools):
    with pools.reader.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE prepared_probe (v int UNIQUE, n serial); "
                             "INSERT INTO prepared_probe (v) VALUES (1)")
        with pytest.raises(sa.exc.IntegrityError):  # PREPARE stays, its EXECUTE fails
            conn.execute(INSERT_PROBE, {"v": 1})
        conn.execute(INSERT_PROBE, {"v": 2})  # PREPARE again is refused: the EXECUTE goes alone
        assert conn.connection.dbapi_connection.switch.on
        assert len(_kept(conn)) == 1 and conn.connection.dbapi_connection.prepared == set(_kept(conn))
        [(_text, generic, custom)] = _kept(conn).values()
        assert generic + custom == 2  # the failed run and the second, both through the prepared statement
        assert conn.exec_driver_sql("SELECT last_value FROM prepared_probe_n_seq").scalar_one() == 3
        assert conn.exec_driver_sql("SELECT array_agg(v ORDER BY v) FROM prepared_probe").scalar_one() == [1, 2]


def test_a_plan_the_schema_changed_under_is_prepared_again(pools):
    read = sa.text("SELECT a FROM prepared_shape").execution_options(prepared=True)
    with pools.reader.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE prepared_shape (a int); INSERT INTO prepared_shape VALUES (7)")
        assert conn.execute(read).scalar_one() == 7
        conn.exec_driver_sql("ALTER TABLE prepared_shape ALTER COLUMN a TYPE text")
        assert conn.execute(read).scalar_one() == "7"  # the kept plan answered ints: sent as text
        assert _kept(conn) == {}
        assert conn.execute(read).scalar_one() == "7"
        [(text, _generic, _custom)] = _kept(conn).values()
        assert "prepared_shape" in text


def test_a_get_and_a_create_are_planned_once_per_connection(client, org_a, engine):
    created = client.post("/patients", json={"branch_id": org_a.branch_id, "name": "Planned Once"},
                          headers=org_a.headers)
    assert created.status_code == 201, created.text
    patient = created.json()["data"]["id"]
    for _ in range(12):
        assert client.get(f"/patients/{patient}", headers=org_a.headers).json()["data"]["name"] == "Planned Once"
    def kind(text: str) -> str:
        return ("get" if "access_log" in text and "FROM patient" in text else
                "create" if "INSERT INTO patient" in text else "other")

    runs = collections.Counter()
    for server_side in _kept_in_pool(engine):
        for text, generic, custom in server_side.values():
            runs[kind(text)] += generic + custom
    assert runs["get"] >= 12 and runs["create"] >= 1


def test_a_get_under_a_parent_is_planned_once_per_connection(client, org_a):
    """A sub-resource's get adds its parent's condition to the engine's prepared get by id; it
    shows no patient data, so it is read on the reader pool."""
    reader = database.current_pools().reader
    world = build_world(org_a)
    paid = client.post(f"/loans/{world.loan_id}/payments", json={"amount": 10}, headers=org_a.headers)
    assert paid.status_code == 201, paid.text
    payment = f"/loans/{world.loan_id}/payments/{paid.json()['data']['id']}"
    for _ in range(12):
        assert client.get(payment, headers=org_a.headers).json()["data"]["amount"] == 10
    other_loan = build_world(org_a).loan_id  # the same payment under another loan of the organization
    assert client.get(payment.replace(world.loan_id, other_loan), headers=org_a.headers).status_code == 404
    runs = sum(generic + custom for server_side in _kept_in_pool(reader)
               for text, generic, custom in server_side.values()
               if "FROM loan_payment" in text and "loan_payment.loan_id = $" in text)
    assert runs >= 13
