"""What recording reads costs: get-by-id and list of patients with and without their access row.

An A/B that survives a loaded machine: one process, one database, the two variants interleaved in
short alternating blocks (the order flips every round). What is compared is CPU time, which a
neighbour's load barely moves: this process's (``time.process_time``) plus that of the PostgreSQL
backends serving it (``/proc/<pid>/schedstat``, nanoseconds on CPU), per request. In-process (no
HTTP server), a request's fixed cost is smaller than served, so the ratio is an upper bound of the
served one. Wall-time medians are printed too; on a shared machine they are noise.

    .venv/bin/python bench/access_cost.py     # DATABASE_URL's server, database clinic_access_bench
"""
from __future__ import annotations

import os
import random
import statistics
import sys
import time

import sqlalchemy as sa
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import seed as seeding  # noqa: E402
from bench.inprocess import seeded_app  # noqa: E402
from models import database  # noqa: E402

ROUNDS = int(os.environ.get("ACCESS_BENCH_ROUNDS", "12"))
BLOCK = int(os.environ.get("ACCESS_BENCH_BLOCK", "100"))


def _recording(app, on: bool) -> None:
    """Switch the patients' access rows on or off in ``app``'s descriptor (frozen: a bench's
    liberty), and drop the statements built with the other setting."""
    patients = app.state.resources["patient"]
    object.__setattr__(patients, "patient_column", "id" if on else None)
    patients.statements.clear()


def _backend_cpu_ns(engine, database_name: str) -> int:
    """CPU time so far of every backend connected to the bench database (this probe's included)."""
    with engine.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                            {"name": database_name}).scalars().all()
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a backend that ended took its time with it; both variants lose alike
    return total


def main() -> int:
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = "clinic_access_bench"
    url, seeded, app, client, headers = seeded_app(server, name)
    org_id = seeding.org_uuid(1)
    ids = seeding.sample_patient_ids(url, org_id, 2_000)
    scenarios = {
        "get patient by id": lambda: client.get(f"/patients/{random.choice(ids)}", headers=headers),
        "list patients": lambda: client.get(f"/patients?page={random.randint(1, 50)}&pageSize=20", headers=headers),
    }
    times = {(scenario, on): [] for scenario in scenarios for on in (False, True)}
    cpu = {(scenario, on): [0, 0] for scenario in scenarios for on in (False, True)}  # python ns, postgres ns
    probe = sa.create_engine(database.sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    for on in (False, True):  # warm both statement caches
        _recording(app, on)
        for call in scenarios.values():
            for _ in range(50):
                assert call().status_code == 200
    for round_ in range(ROUNDS):
        for on in ((False, True) if round_ % 2 == 0 else (True, False)):
            _recording(app, on)
            for scenario, call in scenarios.items():
                python_before, postgres_before = time.process_time_ns(), _backend_cpu_ns(probe, name)
                for _ in range(BLOCK):
                    started = time.perf_counter()
                    response = call()
                    times[(scenario, on)].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                cpu[(scenario, on)][0] += time.process_time_ns() - python_before
                cpu[(scenario, on)][1] += _backend_cpu_ns(probe, name) - postgres_before
    print(f"{seeded.patients} patients, {ROUNDS} rounds x {BLOCK} requests per variant and scenario")
    requests = ROUNDS * BLOCK
    for scenario in scenarios:
        (py_off, pg_off), (py_on, pg_on) = cpu[(scenario, False)], cpu[(scenario, True)]
        off, on = (py_off + pg_off) / requests / 1e6, (py_on + pg_on) / requests / 1e6
        print(f"{scenario:18s} CPU ms/request without access row {off:.3f} (python {py_off / requests / 1e6:.3f}, "
              f"postgres {pg_off / requests / 1e6:.3f}), with {on:.3f} (python {py_on / requests / 1e6:.3f}, "
              f"postgres {pg_on / requests / 1e6:.3f}): cost {100 * (on / off - 1):+.1f}%")
        wall_off = statistics.median(times[(scenario, False)]) * 1000
        wall_on = statistics.median(times[(scenario, True)]) * 1000
        print(f"{'':18s} wall median {wall_off:.3f} ms -> {wall_on:.3f} ms")
    probe.dispose()
    app.state.pools.dispose()
    database.drop_database(server, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
