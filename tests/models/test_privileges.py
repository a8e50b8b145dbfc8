"""The API's role reads and writes rows and can do nothing else: the schema, the triggers and the
audit trail are the owner's (SQLSTATE 42501, insufficient_privilege, for everything else)."""
import pytest
import sqlalchemy as sa

from models import database

FORBIDDEN = [
    "CREATE TABLE intruder (id int)",
    "ALTER TABLE patient ADD COLUMN intruder int",
    "DROP TABLE supplier",
    "TRUNCATE patient",
    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "SET session_replication_role = replica",
    "UPDATE audit_log SET action = action",
    "DELETE FROM audit_log",
    "DELETE FROM _yoyo_migration",
    "UPDATE access_log SET user_id = NULL",
    "DELETE FROM access_log",
    "TRUNCATE access_log",
    "TRUNCATE audit_log",
    "ALTER TABLE access_log DISABLE TRIGGER ALL",
    "DROP TABLE audit_log_default",
    "UPDATE audit_seal SET hash = hash",
    "DELETE FROM audit_seal",
    "DELETE FROM audit_pruned_month",
    "CREATE INDEX intruder ON patient (first_name)",
]


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_the_runtime_role_may_not(engine, statement):
    with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as refused:
            conn.execute(sa.text(statement))
    assert refused.value.orig.pgcode == "42501", refused.value


def test_the_runtime_role_is_not_the_owner(engine, owner_url):
    with engine.connect() as conn:
        role, superuser = conn.execute(sa.text(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")).one()
        owners = set(conn.scalars(sa.text(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")))
    assert role == database.EMBEDDED_RUNTIME_ROLE and not superuser and role not in owners


def test_migrate_takes_back_a_privilege_granted_by_hand(engine, owner_url, settings):
    owner = sa.create_engine(database.sqlalchemy_url(owner_url))
    with owner.begin() as conn:
        conn.execute(sa.text(f"GRANT UPDATE, DELETE, TRUNCATE ON audit_log TO {database.EMBEDDED_RUNTIME_ROLE}"))
    owner.dispose()
    assert database.migrate(owner_url, runtime_role=database.EMBEDDED_RUNTIME_ROLE, settings=settings) == 0
    with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as refused:
            conn.execute(sa.text("DELETE FROM audit_log"))
    assert refused.value.orig.pgcode == "42501"


def test_a_partition_of_an_audit_table_is_append_only_too(engine, owner_url, settings):
    owner = sa.create_engine(database.sqlalchemy_url(owner_url))
    with owner.begin() as conn:  # a month that `clinic-api audit prune` creates after migrate ran
        conn.execute(sa.text("CREATE TABLE audit_log_archive PARTITION OF audit_log "
                             "FOR VALUES FROM ('1990-01-01') TO ('1990-02-01')"))
    try:
        database.migrate(owner_url, runtime_role=database.EMBEDDED_RUNTIME_ROLE, settings=settings)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM audit_log_archive")).scalar() == 0
            with pytest.raises(sa.exc.DBAPIError) as refused:
                conn.execute(sa.text("DELETE FROM audit_log_archive"))
        assert refused.value.orig.pgcode == "42501"
    finally:
        with owner.begin() as conn:
            conn.execute(sa.text("DROP TABLE audit_log_archive"))
        owner.dispose()


def test_an_owner_that_is_not_a_superuser_migrates_and_grants(server_url, settings):
    """The deployment of docs/operations.md: the owner has CREATEROLE (and, from PostgreSQL 16,
    ADMIN OPTION on the runtime role) to store the runtime role's timeouts, nothing more."""
    import uuid

    suffix = uuid.uuid4().hex[:10]
    owner, name = f"clinic_owner_{suffix}", f"clinic_owned_{suffix}"
    runtime = database.EMBEDDED_RUNTIME_ROLE
    database.runtime_url(server_url)  # the runtime role exists
    admin = sa.create_engine(database.sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {owner} LOGIN CREATEROLE"))
        if conn.connection.dbapi_connection.server_version >= 160000:
            conn.execute(sa.text(f"GRANT {runtime} TO {owner} WITH ADMIN OPTION"))
        conn.execute(sa.text(f"CREATE DATABASE {name} OWNER {owner}"))
    owner_url = sa.engine.make_url(database.with_database(server_url, name)).set(username=owner).render_as_string(
        hide_password=False)
    try:
        assert database.migrate(owner_url, runtime_role=runtime, settings=settings) > 0
        api = sa.create_engine(database.sqlalchemy_url(database.runtime_url(owner_url, runtime)))
        with api.connect() as conn:
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == f"{settings.db_lock_timeout_ms // 1000}s"
            assert conn.execute(sa.text("SELECT count(*) FROM patient")).scalar() == 0
            with pytest.raises(sa.exc.DBAPIError) as refused:
                conn.execute(sa.text("DELETE FROM audit_log"))
        api.dispose()
        assert refused.value.orig.pgcode == "42501"
    finally:
        database.drop_database(server_url, name)
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE {owner}"))
        admin.dispose()
