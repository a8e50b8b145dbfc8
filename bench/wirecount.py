"""A TCP proxy in front of PostgreSQL that counts what the client sends on the wire.

SQLAlchemy's ``before_cursor_execute`` event sees the statements the application executes; it does
not see the ones the driver and the pool add on their own: the pre-ping ``SELECT 1`` on every
checkout, psycopg2's implicit ``BEGIN``, and the ``COMMIT``/``ROLLBACK`` when a connection is
returned. Each of those is a round trip to the server all the same. This proxy counts every simple
query ('Q') and extended-protocol sync ('S') the client sends, and keeps their text, so
``run.py`` can report round trips per request next to statements per request.

The client must connect without TLS (``sslmode=disable``), so the proxy can read the stream.
"""
from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from urllib.parse import parse_qs, urlsplit

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


def upstream_of(url: str) -> tuple[int, object]:
    """(address family, address) of the server behind a libpq-style URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = (query.get("host") or [parts.hostname or ""])[0]
    port = int((query.get("port") or [parts.port or 5432])[0])
    if not host or host.startswith("/"):
        return socket.AF_UNIX, f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


class WireCounter:
    def __init__(self, database_url: str, keep: int = 200):
        self.family, self.address = upstream_of(database_url)
        self.round_trips = 0
        self.recent: deque[str] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="wirecount-accept").start()

    def count(self) -> int:
        with self._lock:
            return self.round_trips

    def take_recent(self) -> list[str]:
        """The texts recorded since the last call (at most ``keep`` of them)."""
        with self._lock:
            texts = list(self.recent)
            self.recent.clear()
            return texts

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass

    # --- plumbing ---------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.socket(self.family, socket.SOCK_STREAM)
                server.connect(self.address)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                if sock.family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buffer = b""
        started = False  # until the startup packet, messages carry no type byte
        try:
            while data := client.recv(65536):
                buffer += data
                # Count before forwarding: the answer cannot reach the client before the count.
                while True:
                    if not started:
                        if len(buffer) < 8:
                            break
                        length, code = struct.unpack("!ii", buffer[:8])
                        if len(buffer) < length:
                            break
                        buffer = buffer[length:]
                        if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                            started = True
                        continue
                    if len(buffer) < 5:
                        break
                    kind = buffer[:1]
                    length = struct.unpack("!i", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    if kind in (b"Q", b"S"):
                        text = buffer[5:1 + length].rstrip(b"\0").decode("utf-8", "replace") if kind == b"Q" else "<sync>"
                        with self._lock:
                            self.round_trips += 1
                            self.recent.append(" ".join(text.split()))
                    buffer = buffer[1 + length:]
                server.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
