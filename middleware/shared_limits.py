"""One rate-limit storage for the workers of one ``clinic-api serve``, without Redis.

Each worker counting alone let one user through once per worker (two workers: 164-200 requests a
minute instead of 100). ``clinic-api serve`` starts ``SharedStorageHost`` before it forks its
workers: one ``limits`` memory storage in a process of its own (multiprocessing's manager server
on a Unix socket in a private temporary folder). Each worker reaches it through
``SharedMemoryStorage`` (``clinic-shared:///path/to/socket``, registered with ``limits`` by
defining the class), authenticated by the process key the workers inherit from serve.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from multiprocessing.managers import BaseManager, RemoteError
from pathlib import Path
from urllib.parse import urlsplit

from limits.storage import MemoryStorage, MovingWindowSupport, Storage

from config import Settings

SHARED_SCHEME = "clinic-shared"


class _StorageHost(BaseManager):
    """The process holding the workers' common memory storage (multiprocessing's manager server:
    one thread per connected worker thread, every call one request over the socket)."""


class _StorageClient(BaseManager):
    pass


_StorageClient.register("storage")


class SharedMemoryStorage(Storage, MovingWindowSupport):
    """``clinic-shared:///path/to/socket``: the memory storage of the host process, through a proxy.

    Workers are forked from the process that started the host, so they hold its authentication
    key (multiprocessing's process authkey) without it appearing in any setting.
    """

    STORAGE_SCHEME = [SHARED_SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options):
        client = _StorageClient(address=urlsplit(uri).path, authkey=multiprocessing.current_process().authkey)
        client.connect()
        self._remote = client.storage()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self):
        return (OSError, EOFError, RemoteError)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._remote.incr(key, expiry, amount)

    def get(self, key: str) -> int:
        return self._remote.get(key)

    def get_expiry(self, key: str) -> float:
        return self._remote.get_expiry(key)

    def check(self) -> bool:
        return self._remote.check()

    def reset(self):
        return self._remote.reset()

    def clear(self, key: str) -> None:
        return self._remote.clear(key)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self._remote.acquire_entry(key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self._remote.get_moving_window(key, limit, expiry)


class SharedStorageHost:
    """Started by ``clinic-api serve`` before it forks its workers; stopped when it returns."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="clinic-limits-"))
        self.uri = f"{SHARED_SCHEME}://{self.folder / 'socket'}"
        storage = MemoryStorage()
        _StorageHost.register("storage", callable=lambda: storage)
        self.host = _StorageHost(address=str(self.folder / "socket"), authkey=multiprocessing.current_process().authkey)
        self.host.start(initializer=_stop_with_parent, initargs=(os.getpid(),))

    def stop(self) -> None:
        self.host.shutdown()
        shutil.rmtree(self.folder, ignore_errors=True)


def _stop_with_parent(parent_pid: int) -> None:
    """In the host process: exit when serve is gone, even if it was killed."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def shares_between_workers(settings: Settings) -> bool:
    """Whether serve must start the host: several workers on the in-process default."""
    return settings.workers > 1 and settings.rate_limit_enabled and settings.rate_limit_storage_uri == "memory://"
