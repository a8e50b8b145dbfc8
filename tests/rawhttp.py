"""HTTP/1.1 spoken over a plain socket, for tests of what a client library would never send:
oversized or endless headers, chunked bodies on any method, bytes that are not HTTP at all."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = field(repr=False, default=b"")

    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> dict:
        """The error object, after checking the envelope."""
        envelope = self.json()
        assert envelope["success"] is False and envelope["data"] is None, envelope
        return envelope["error"]


def connect(base: str, timeout: float = 10) -> socket.socket:
    parts = urlsplit(base)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def request_bytes(method: str, path: str, headers: dict | list | None = None, body: bytes | None = None) -> bytes:
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {name.lower() for name, _ in pairs}
    if "host" not in names:
        pairs.insert(0, ("Host", "127.0.0.1"))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        pairs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in pairs) + "\r\n"
    return head.encode("latin-1") + (body or b"")


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part) + b"0\r\n\r\n"


class Reader:
    """Reads answers off one connection (keep-alive: several in a row)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def answer(self) -> Answer:
        """The next answer; EOFError if the server closed first, ConnectionResetError on a reset."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"closed after {len(self.buffer)} bytes of an answer")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                raise EOFError("closed in the middle of a body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status, headers, body, head)

    def closed(self, within: float) -> bool:
        """True when the server closes the connection within ``within`` seconds (nothing more sent)."""
        self.sock.settimeout(within)
        try:
            return self.sock.recv(1) == b""
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True


def exchange(base: str, raw: bytes, timeout: float = 15) -> Answer:
    """Send ``raw`` on a new connection and read one answer."""
    with connect(base, timeout) as sock:
        sock.sendall(raw)
        return Reader(sock).answer()


def send_slowly(sock: socket.socket, data: bytes, interval: float, until: float) -> bool:
    """One byte per ``interval`` until ``until`` (monotonic); False once the server has closed."""
    for byte in data:
        if time.monotonic() >= until:
            return True
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        time.sleep(interval)
    return True
