"""What one rate-limit decision costs: the in-process memory storage (one worker) against the
storage serve shares between its workers (middleware/shared_limits.py, a manager process over a Unix
socket), and Redis when one answers on 127.0.0.1:6379.

Each variant decides for the default policy of an authenticated request (one key, as the edge
does for every API call) and, separately, for a login (two policies). The variants alternate in
short blocks so that a neighbour's load falls on all of them; the CPU of this process
(``time.process_time``) and the wall time are both reported per decision, medians of the blocks.
The host process's CPU is not in the first figure; the wall time includes it.

    .venv/bin/python bench/ratelimit_cost.py
"""
from __future__ import annotations

import os
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config  # noqa: E402
from middleware import ratelimit, shared_limits  # noqa: E402

ROUNDS = int(os.environ.get("RATELIMIT_BENCH_ROUNDS", "10"))
BLOCK = int(os.environ.get("RATELIMIT_BENCH_BLOCK", "500"))


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    # Limits far above what the bench sends: every decision allows, as most do.
    base = config.load({"APP_ENV": "development", "RATE_LIMIT_DEFAULT": "1000000/minute",
                        "RATE_LIMIT_LOGIN": "1000000/minute"})
    host = shared_limits.SharedStorageHost()
    variants = {"memory": ratelimit.RateLimits(base),
                "shared": ratelimit.RateLimits(base.with_overrides(rate_limit_storage_uri=host.uri))}
    if _redis_up():
        variants["redis"] = ratelimit.RateLimits(base.with_overrides(rate_limit_storage_uri="redis://127.0.0.1:6379/15"))
    claims = {"sub": str(uuid.uuid4())}
    samples = {(name, kind): ([], []) for name in variants for kind in ("api", "login")}
    try:
        for round_ in range(ROUNDS):
            order = list(variants.items())
            if round_ % 2:
                order.reverse()
            for name, limits in order:
                for kind, route, who in (("api", "/patients", claims), ("login", "/auth/login", None)):
                    cpu, wall = time.process_time(), time.perf_counter()
                    for _ in range(BLOCK):
                        limits.check(route, "POST" if kind == "login" else "GET", who, "203.0.113.7")
                    cpu_s, wall_s = samples[(name, kind)]
                    cpu_s.append((time.process_time() - cpu) / BLOCK * 1e6)
                    wall_s.append((time.perf_counter() - wall) / BLOCK * 1e6)
    finally:
        host.stop()
    print(f"per decision, median of {ROUNDS} blocks of {BLOCK} (load average {os.getloadavg()[0]:.1f}):")
    for (name, kind), (cpu_s, wall_s) in samples.items():
        print(f"  {name:7} {kind:6} cpu {statistics.median(cpu_s):7.1f} us   wall {statistics.median(wall_s):7.1f} us")


if __name__ == "__main__":
    main()
