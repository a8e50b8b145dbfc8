"""Migrations apply, roll back completely and apply again, on every server the suite can reach."""
import uuid

import pytest
import sqlalchemy as sa

import config
from models import database


def _servers(embedded_url):
    servers = {"primary": embedded_url}
    secondary = config.ci_postgres_url()
    if secondary:
        servers["secondary"] = secondary
    return servers


@pytest.fixture(params=["primary", "secondary"])
def scratch_url(request, server_url):
    """An empty database on the primary test server, and on the secondary one when configured."""
    if request.param == "secondary":
        admin = config.ci_postgres_url()
        if not admin:
            pytest.skip("SECONDARY_DATABASE_URL is not set (.ci/run sets it when PostgreSQL answers on 5432)")
    else:
        admin = server_url
    name = f"clinic_migrate_{uuid.uuid4().hex[:12]}"
    database.ensure_database(admin, name)
    yield database.with_database(admin, name)
    database.drop_database(admin, name)


def _tables(url):
    engine = sa.create_engine(database.sqlalchemy_url(url))
    try:
        return set(sa.inspect(engine).get_table_names()) - {"_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock"}
    finally:
        engine.dispose()


def test_apply_rollback_apply(scratch_url):
    total = len(list(database.MIGRATIONS_DIR.glob("*.sql"))) - len(list(database.MIGRATIONS_DIR.glob("*.rollback.sql")))
    assert database.migrate(scratch_url) == total
    assert database.pending_migrations(scratch_url) == []
    created = _tables(scratch_url)
    assert {"organization", "patient", "audit_log", "session", "role", "user_role", "supplier"} <= created
    assert database.rollback(scratch_url, None) == total
    assert _tables(scratch_url) == set()
    assert database.migrate(scratch_url) == total
    assert _tables(scratch_url) == created


def test_one_step_rollback_undoes_only_the_newest(scratch_url):
    database.migrate(scratch_url)
    newest = sorted(p.stem for p in database.MIGRATIONS_DIR.glob("*.sql") if not p.stem.endswith(".rollback"))[-1]
    assert database.rollback(scratch_url, 1) == 1
    assert database.pending_migrations(scratch_url) == [newest]
    assert database.migrate(scratch_url) == 1


def test_default_roles_are_seeded_with_scopes(scratch_url):
    database.migrate(scratch_url)
    engine = sa.create_engine(database.sqlalchemy_url(scratch_url))
    with engine.connect() as conn:
        roles = dict(conn.execute(sa.text("SELECT name, scopes FROM role")).all())
    engine.dispose()
    assert set(roles) == {"admin", "doctor", "nurse", "receptionist", "accountant"}
    assert {"audit:read", "roles:write", "patients:write"} <= set(roles["admin"])
    assert not any(scope.startswith("transactions") for scope in roles["receptionist"])
    assert not any(scope.startswith("prescriptions") for scope in roles["accountant"])


def test_every_migration_has_a_rollback():
    forward = {p.name[: -len(".sql")] for p in database.MIGRATIONS_DIR.glob("*.sql") if not p.name.endswith(".rollback.sql")}
    backward = {p.name[: -len(".rollback.sql")] for p in database.MIGRATIONS_DIR.glob("*.rollback.sql")}
    assert forward == backward


# --- crashes and concurrency -----------------------------------------------------------------------
# A scratch folder of three migrations; the second one sleeps after its DDL when the migrator's
# session sets clinic.sleep_seconds (PGOPTIONS, for the child that is killed), so a kill lands
# after the DDL and before the record: where yoyo alone would leave a table without its record.
SCRATCH_MIGRATIONS = {
    "0001.create-ward.sql": "CREATE TABLE crash_ward (id int PRIMARY KEY);",
    "0002.create-bed.sql": "-- depends: 0001.create-ward\nCREATE TABLE crash_bed (id int PRIMARY KEY);\n"
                           "SELECT pg_sleep(coalesce(nullif(current_setting('clinic.sleep_seconds', true), ''), '0')::float);",
    "0003.create-cot.sql": "-- depends: 0002.create-bed\nCREATE TABLE crash_cot (id int PRIMARY KEY);",
}


@pytest.fixture
def scratch_migrations(tmp_path):
    for name, body in SCRATCH_MIGRATIONS.items():
        (tmp_path / name).write_text(body + "\n")
        (tmp_path / name.replace(".sql", ".rollback.sql")).write_text(
            f"DROP TABLE crash_{name.split('-')[1].split('.')[0]};\n")
    return tmp_path


def _child_migrator(url, directory, **env):
    import os
    import subprocess
    import sys

    code = "import sys, pathlib; from models import database; database.migrate(sys.argv[1], directory=pathlib.Path(sys.argv[2]))"
    return subprocess.Popen([sys.executable, "-c", code, url, str(directory)], cwd=str(config.ROOT),
                            env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)


def _wait_for(conn_url, sql, timeout=30):
    import time

    engine = sa.create_engine(database.sqlalchemy_url(conn_url), isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(sa.text(sql)).scalar():
                    return
            time.sleep(0.1)
        raise AssertionError(f"never true: {sql}")
    finally:
        engine.dispose()


def _applied_ids(url):
    engine = sa.create_engine(database.sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return sorted(conn.scalars(sa.text("SELECT migration_id FROM _yoyo_migration")))
    finally:
        engine.dispose()


def test_a_migrator_killed_mid_migration_blocks_the_next_for_seconds_at_most(scratch_url, scratch_migrations):
    import signal
    import time

    child = _child_migrator(scratch_url, scratch_migrations, PGOPTIONS="-c clinic.sleep_seconds=60")
    # Only this database's sessions: another test's sleep on the same server must not pass for
    # the child's, which would then be killed before 0001 committed.
    _wait_for(scratch_url, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%'"
                           " AND datname = current_database() AND pid <> pg_backend_pid()")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    started = time.monotonic()
    assert database.migrate(scratch_url, directory=scratch_migrations) == 2  # 0002 again, then 0003
    assert time.monotonic() - started < 5
    assert _applied_ids(scratch_url) == ["0001.create-ward", "0002.create-bed", "0003.create-cot"]
    assert database.pending_migrations(scratch_url, scratch_migrations) == []


def test_two_migrators_at_once_apply_each_migration_once(scratch_url, scratch_migrations):
    first = _child_migrator(scratch_url, scratch_migrations, PGOPTIONS="-c clinic.sleep_seconds=1")
    second = _child_migrator(scratch_url, scratch_migrations, PGOPTIONS="-c clinic.sleep_seconds=1")
    for child in (first, second):
        assert child.wait(timeout=60) == 0, child.stderr.read()
    assert _applied_ids(scratch_url) == ["0001.create-ward", "0002.create-bed", "0003.create-cot"]


def test_a_lock_row_left_by_yoyo_blocks_nothing(scratch_url, scratch_migrations):
    import time

    database.migrate(scratch_url, directory=scratch_migrations)
    database.rollback(scratch_url, None, directory=scratch_migrations)
    engine = sa.create_engine(database.sqlalchemy_url(scratch_url))
    with engine.begin() as conn:  # what a yoyo migrator killed while holding its lock leaves behind
        conn.execute(sa.text("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 424242)"))
    engine.dispose()
    started = time.monotonic()
    assert database.migrate(scratch_url, directory=scratch_migrations) == 3
    assert time.monotonic() - started < 5


def test_a_failing_migration_leaves_neither_its_changes_nor_its_record(scratch_url, scratch_migrations):
    (scratch_migrations / "0003.create-cot.sql").write_text(
        "-- depends: 0002.create-bed\nCREATE TABLE crash_cot (id int PRIMARY KEY);\nSELECT 1/0;\n")
    with pytest.raises(Exception, match="division by zero"):
        database.migrate(scratch_url, directory=scratch_migrations)
    assert _applied_ids(scratch_url) == ["0001.create-ward", "0002.create-bed"]
    assert "crash_cot" not in _tables(scratch_url)
