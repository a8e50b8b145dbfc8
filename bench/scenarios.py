"""The benchmark scenarios, once: their wrk Lua script and the same requests built in Python.

The Python builders serve the statement count (in-process requests) and the fallback load
generator (``loadgen.py``) when wrk is not installed. Keep them in step with ``lua/*.lua``.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote

# A request: method, path (with query), JSON body or None.
Request = tuple[str, str, "bytes | None"]


@dataclass
class Context:
    """What the requests need to know about the seeded data (the Lua scripts get it as env vars)."""

    ids: list[str]
    branch_id: str
    max_page: int = 50
    min_page: int = 1
    term: str = ""
    tag: str = field(default_factory=lambda: str(int(time.time())))


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    script: str                      # file in bench/lua/
    build: Callable[[Context, random.Random, itertools.count], Request]
    baseline: bool = False           # bench/baseline.py answers it too
    stack: bool = False              # so does bench/stack_floor.py (connexion in front of the baseline)
    term: str | None = None          # search term, when the scenario searches
    pages_of: str | None = None      # table whose per-org size bounds the random page
    writes: bool = False             # each server's run starts from a settled database
    peers: bool = True               # the FastAPI peer and the floor answer it too


def _get_patient(ctx: Context, rng: random.Random, _seq) -> Request:
    return "GET", f"/patients/{rng.choice(ctx.ids)}", None


def _list_patients(ctx: Context, rng: random.Random, _seq) -> Request:
    return "GET", f"/patients?page={rng.randint(ctx.min_page, ctx.max_page)}&pageSize=20", None


def _sync_patients(_ctx: Context, rng: random.Random, _seq) -> Request:
    # The seed spreads updated_at over three years: a random instant is a sync page anywhere in them.
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=rng.randint(1, 1090))
    return "GET", f"/patients?updatedSince={since.strftime('%Y-%m-%dT%H:%M:%SZ')}&pageSize=20", None


def _search(ctx: Context, _rng, _seq) -> Request:
    return "GET", f"/patients?search={quote(ctx.term, safe='')}&pageSize=20", None


def _list_appointments(ctx: Context, rng: random.Random, _seq) -> Request:
    return "GET", (f"/appointments?embed=patient,staff,branch&page={rng.randint(1, ctx.max_page)}"
                   "&pageSize=20"), None


def _create_patient(ctx: Context, rng: random.Random, seq: itertools.count) -> Request:
    tag = f"{ctx.tag}-py-{next(seq)}"
    body = {
        "branch_id": ctx.branch_id,
        "name": f"Load Patient {tag}",
        "email": f"load.{tag}@bench.example",
        "phone": f"+1555{rng.randint(0, 9_999_999):07d}",
        "gender": "female",
        "date_of_birth": "1985-04-12",
    }
    return "POST", "/patients", json.dumps(body).encode()


def scenarios(common_term: str, rare_term: str) -> list[Scenario]:
    """In run order: reads first, the write last (its new rows would change the pages)."""
    return [
        Scenario("get_patient", "get patient by id", "get_patient.lua", _get_patient, baseline=True,
                 stack=True),
        Scenario("list_patients", "list patients (page 1..50)", "list_patients.lua", _list_patients,
                 pages_of="patient"),
        # A sync page from a random instant (issue 20: it should cost about what a list page does);
        # the peer and the floor do not sync.
        Scenario("sync_patients", "sync patients (random instant)", "sync_patients.lua", _sync_patients,
                 peers=False),
        Scenario("search_common", f"search common '{common_term}'", "search_patients.lua", _search,
                 term=common_term),
        Scenario("search_rare", f"search rare '{rare_term}'", "search_patients.lua", _search,
                 term=rare_term),
        Scenario("list_appointments", "appointments +3 embeds", "list_appointments.lua",
                 _list_appointments, pages_of="appointment"),
        Scenario("create_patient", "create patient", "create_patient.lua", _create_patient,
                 baseline=True, writes=True),
    ]
