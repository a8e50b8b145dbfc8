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
