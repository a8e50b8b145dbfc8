"""Real servers a test starts on loopback, on free ports, and stops when it ends: PgBouncer and
PostgreSQL clusters (a primary and its streaming replicas) from the Debian packages.

They refuse to run as root (CI runs as root): they are started as an unprivileged user, which
owns their folders.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_user(preferred: str = "postgres") -> str | None:
    """Who the servers run as: nobody special when not root, else ``preferred`` if it exists."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(preferred)
        return preferred
    except KeyError:
        return "nobody"


def scratch_folder(prefix: str, user: str | None) -> Path:
    """A folder ``user`` owns and can reach: pytest's own tmp folders are root's, mode 0700."""
    path = Path(tempfile.mkdtemp(prefix=f"clinic-{prefix}-"))
    path.chmod(0o755)
    own(path, user)
    return path


def own(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        for item in [path, *path.rglob("*")]:
            os.chown(item, entry.pw_uid, entry.pw_gid)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_as(user: str | None, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, user=user, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done


class PostgresServer:
    """A PostgreSQL 15 server of its own on a free loopback port, trusting local connections:
    a primary from ``initdb``, or a streaming replica of one from ``pg_basebackup``.

    ``stop`` and ``start`` keep the data folder and the port, as an operator's restart does.
    """

    def __init__(self, folder: Path, user: str | None):
        self.folder = folder
        self.data = folder / "data"
        self.user = user
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @classmethod
    def primary(cls) -> "PostgresServer":
        user = service_user()
        cluster = cls(scratch_folder("primary", user), user)
        run_as(user, [str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--locale=C"])
        cluster._configure(
            # the machine is shared and loaded: nothing here needs to survive an OS crash
            "fsync = off", "full_page_writes = off", "max_connections = 200",
            "wal_level = replica", "max_wal_senders = 5", "hot_standby = on",
        )
        return cluster.start()

    def replica(self) -> "PostgresServer":
        """A hot standby of this server, streaming from it (``pg_basebackup -R``)."""
        standby = PostgresServer(scratch_folder("replica", self.user), self.user)
        run_as(self.user, [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                           "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast"])
        standby._configure()
        return standby.start()

    def _configure(self, *lines: str) -> None:
        settings = ["listen_addresses = '127.0.0.1'", f"port = {self.port}",
                    f"unix_socket_directories = '{self.folder}'", *lines]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "\n".join(settings) + "\n")

    def start(self, timeout: float = 60) -> "PostgresServer":
        log = open(self.folder / "log", "a")
        self.process = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(self.data)], user=self.user,
                                        stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: "
                                   + (self.folder / "log").read_text()[-2000:])
            ready = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"])
            if ready.returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"postgres on {self.port} did not accept connections")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (SIGINT: sessions are ended, a checkpoint is written) or ``immediate``
        (SIGQUIT: as a crash, recovery at the next start)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def url(self, user: str = "postgres", database: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def migrated_database(cluster: PostgresServer, settings, database: str = "clinic") -> tuple[str, str]:
    """``database`` on ``cluster``, migrated by its superuser: (the owner's URL, the runtime role's)."""
    from models import database as db

    owner = cluster.url(database=database)
    db.ensure_database(cluster.url(), database)
    runtime = db.runtime_url(owner)
    db.migrate(owner, runtime_role=db.EMBEDDED_RUNTIME_ROLE, settings=settings)
    return owner, runtime


def create_org(url: str, settings, email: str, password: str, name: str = "Clinic") -> dict:
    """A new organization with its first branch and an admin, written through ``url`` with an
    application state of its own (the session app's is bound to another database)."""
    import state
    from models import accounts, database as db

    app_state = state.AppState(settings=settings, pools=db.create_pools(url, settings))
    try:
        with state.bound(app_state):
            return accounts.create_organization(name=name, branch_name="Main", admin_email=email,
                                                admin_password=password)
    finally:
        app_state.pools.dispose()


class Redis:
    """A Redis server of its own on a free loopback port, keeping nothing on disk."""

    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
                                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.process)


class PgBouncer:
    """PgBouncer in transaction mode with its defaults otherwise (or ``settings``), in front of one server."""

    def __init__(self, server_host: str, server_port: int, users: list[str], **settings: str):
        # Its own socket folder beside an embedded server's is out of reach for another user.
        self.user = service_user(Path(server_host).owner() if server_host.startswith("/") else "postgres")
        self.folder = folder = scratch_folder("pgbouncer", self.user)
        self.port = free_port()
        (folder / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in users))
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {folder / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            + "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        own(folder, self.user)
        self.process = subprocess.Popen([PGBOUNCER, str(folder / "pgbouncer.ini")], user=self.user,
                                        stdout=subprocess.DEVNULL, stderr=open(folder / "log", "w"))
        wait_for_port(self.port, self.process)

    def url(self, user: str, database: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresCluster:
    """A PostgreSQL 15 server of its own (initdb, then postgres on a free port), for tests that do
    to a server what must not happen to the shared one: stop it, freeze it."""

    def __init__(self):
        self.user = service_user()
        self.folder = scratch_folder("postgres", self.user)
        self.port = free_port()
        data = self.folder / "data"
        subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                       user=self.user, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.process = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.folder}", "-c", "fsync=off"],
            user=self.user, stdout=subprocess.DEVNULL, stderr=open(self.folder / "log", "w"))
        wait_for_port(self.port, self.process)
        deadline = time.monotonic() + 30
        while subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             stdout=subprocess.DEVNULL).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not accept connections")
            time.sleep(0.1)

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def pids(self) -> list[int]:
        """The postmaster first, then every process it started (backends, checkpointer...)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [self.process.pid, *map(int, children)]

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        import signal

        self.signal_all(signal.SIGCONT)
        stop(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)
