"""Real servers a test starts on loopback, on free ports, and stops when it ends: PgBouncer and
PostgreSQL clusters from the Debian packages.

They refuse to run as root (CI runs as root): they are started as an unprivileged user, which
owns their folders.
"""
from __future__ import annotations

import os
import pwd
import shutil
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


class PgBouncer:
    """PgBouncer in transaction mode with its defaults otherwise, in front of one server."""

    def __init__(self, server_host: str, server_port: int, users: list[str]):
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
