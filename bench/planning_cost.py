"""What PostgreSQL spends on the API's statements, sent as text (as psycopg2 sends them) against
prepared once and executed (as asyncpg, the peer's driver, sends them).

psycopg2 has no prepared statements of the protocol: a statement sent as text is parsed,
analysed and planned again (the API prepares its get by id and its create in SQL,
models/prepared.py). This measures how much of a backend's CPU per statement that is: the statements
the API sends for a get by id, a list page, a rare search and a create are captured from the
app in-process, then each is run on one backend in alternating blocks as its text, as
``EXECUTE`` of a ``PREPARE``d statement (PostgreSQL's default ``plan_cache_mode``: a generic plan
after five custom ones when it looks no worse), and the same with ``force_custom_plan`` (parsed
once, planned every time). CPU is the backend's own (``/proc/<pid>/schedstat``), so a
neighbour's load barely moves it; everything runs inside one transaction that is rolled back.

    .venv/bin/python bench/planning_cost.py     # DATABASE_URL's server, database clinic_planning_bench
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import seed as seeding  # noqa: E402
from bench.inprocess import seeded_app  # noqa: E402
from models import database, prepared  # noqa: E402

ROUNDS = int(os.environ.get("PLANNING_BENCH_ROUNDS", "6"))
BLOCK = int(os.environ.get("PLANNING_BENCH_BLOCK", "200"))


def _sent(engine, call) -> list[tuple[str, dict]]:
    sent = []

    def keep(_conn, _cursor, statement, parameters, _context, _many):
        sent.append((statement, parameters))
    sa.event.listen(engine, "after_cursor_execute", keep)
    try:
        assert call().status_code in (200, 201)
    finally:
        sa.event.remove(engine, "after_cursor_execute", keep)
    return sent


def _backend_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _variants(cursor, name: str, statement: str, parameters: dict) -> dict[str, str]:
    """The statement as text, and as EXECUTE of its PREPAREd form (psycopg2's placeholders
    numbered; its ``%%`` is a literal ``%``)."""
    statement = statement.removeprefix(database.ASYNCHRONOUS_PREFIX)
    numbered, order = prepared.positional(statement)
    cursor.execute(f"PREPARE {name} AS " + numbered.replace("%%", "%"))
    arguments = cursor.mogrify(", ".join(["%s"] * len(order)), [parameters[key] for key in order]).decode()
    return {"text": cursor.mogrify(statement, parameters).decode(),
            "prepared": f"EXECUTE {name}({arguments})"}


def main() -> int:
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = "clinic_planning_bench"
    url, seeded, app, client, headers = seeded_app(server, name)
    patient_id = seeding.sample_patient_ids(url, seeding.org_uuid(1), 1)[0]
    branch_id = client.get(f"/patients/{patient_id}", headers=headers).json()["data"]["branch_id"]
    writer = app.state.pools.writer
    requests = {
        "get patient by id": lambda: client.get(f"/patients/{patient_id}", headers=headers),
        "list patients": lambda: client.get("/patients?page=3&pageSize=20", headers=headers),
        "search rare": lambda: client.get("/patients?search=Quixley&pageSize=20", headers=headers),
        "create patient": lambda: client.post("/patients", headers=headers, json={
            "branch_id": branch_id, "name": "Planned Patient", "email": "planned@bench.example"}),
    }
    statements = {label: _sent(writer, call)[-1] for label, call in requests.items()}
    app.state.pools.dispose()

    raw = sa.create_engine(database.sqlalchemy_url(url), poolclass=sa.pool.NullPool).raw_connection()
    cursor = raw.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    pid = cursor.fetchone()[0]
    ways = {label: _variants(cursor, f"planned_{n}", *statements[label]) for n, label in enumerate(statements)}
    modes = (("text", "text", "auto"), ("prepared", "prepared", "auto"),
             ("prepared, custom plans", "prepared", "force_custom_plan"))
    spent = {(label, mode): 0 for label in ways for mode, *_ in modes}
    for round_ in range(ROUNDS):
        for mode, way, plan_cache in (modes if round_ % 2 == 0 else modes[::-1]):
            cursor.execute(f"SET plan_cache_mode = {plan_cache}")
            for label, sent in ways.items():
                before = _backend_cpu_ns(pid)
                for _ in range(BLOCK):
                    cursor.execute(sent[way])
                spent[(label, mode)] += _backend_cpu_ns(pid) - before
    raw.rollback()
    raw.close()
    print(f"{seeded.patients} patients; {ROUNDS} rounds x {BLOCK} statements per way; backend CPU ms per statement")
    print(f"{'':20s}" + "".join(f"{mode:>24s}" for mode, *_ in modes))
    for label in ways:
        print(f"{label:20s}" + "".join(f"{spent[(label, mode)] / (ROUNDS * BLOCK) / 1e6:>24.3f}" for mode, *_ in modes))
    database.drop_database(server, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
