"""Fallback load generator, used only when wrk is not installed (bench/run.py says so in its output).

HTTP/1.1 keep-alive connections driven by asyncio in one process; the same scenarios as the wrk
Lua scripts (see scenarios.py), the same environment variables, and the same ``BENCH_RESULT`` line.
It is much weaker than wrk (one Python core), so its req/s are a floor, not a measurement of the
server's ceiling.

    python bench/loadgen.py --url http://127.0.0.1:8000 --scenario get_patient -c 32 -d 20
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import Context, scenarios  # noqa: E402


class Stats:
    def __init__(self):
        self.latencies: list[float] = []
        self.status_errors = 0
        self.connect_errors = 0
        self.read_errors = 0
        self.first_error = ""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length, chunked, close = 0, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.lower() == "close":
            close = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        body = await reader.readexactly(length)
    return status, body, close


async def _connection(host, port, scenario, ctx, rng, seq, token, deadline, stats: Stats):
    reader = writer = None
    while time.perf_counter() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                stats.connect_errors += 1
                await asyncio.sleep(0.05)
                continue
        method, path, body = scenario.build(ctx, rng, seq)
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        started = time.perf_counter()
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
            status, answer, close = await _read_response(reader)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats.read_errors += 1
            writer.close()
            writer = None
            continue
        stats.latencies.append(time.perf_counter() - started)
        if status >= 300:
            stats.status_errors += 1
            if not stats.first_error:
                stats.first_error = f"{status} {answer[:300].decode(errors='replace')}"
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


async def run(url: str, scenario_name: str, connections: int, duration: float) -> dict:
    term = os.environ.get("BENCH_TERM", "")
    chosen = {s.name: s for s in scenarios(term, term)}[scenario_name]
    ids_file = os.environ.get("BENCH_IDS_FILE")
    ctx = Context(
        ids=Path(ids_file).read_text().split() if ids_file else [],
        branch_id=os.environ.get("BENCH_BRANCH_ID", ""),
        max_page=int(os.environ.get("BENCH_MAX_PAGE", "50")),
        min_page=int(os.environ.get("BENCH_MIN_PAGE", "1")),
        term=term,
    )
    parts = urlsplit(url)
    token = os.environ.get("BENCH_TOKEN", "")
    stats, seq = Stats(), itertools.count(1)
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*[
        _connection(parts.hostname, parts.port or 80, chosen, ctx, random.Random(i), seq, token,
                    deadline, stats)
        for i in range(connections)
    ])
    elapsed = time.perf_counter() - started
    ordered = sorted(stats.latencies)
    us = 1_000_000
    return {
        "requests": len(ordered), "duration_us": int(elapsed * us),
        "status_errors": stats.status_errors, "connect_errors": stats.connect_errors,
        "read_errors": stats.read_errors, "write_errors": 0, "timeouts": 0,
        "p50_us": int(_percentile(ordered, 50) * us), "p90_us": int(_percentile(ordered, 90) * us),
        "p99_us": int(_percentile(ordered, 99) * us),
        "mean_us": (sum(ordered) / len(ordered) * us) if ordered else 0.0,
        "max_us": int(ordered[-1] * us) if ordered else 0, "first_error": stats.first_error,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=20)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.url, args.scenario, args.connections, args.duration))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
