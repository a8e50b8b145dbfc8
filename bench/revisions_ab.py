"""Two revisions of the API side by side, interleaved: what one change costs per request.

    .venv/bin/python bench/revisions_ab.py OLD NEW [scenario ...]     # e.g. 1b78b47 17e8f11 get_patient
    .venv/bin/python bench/revisions_ab.py HEAD+REQUEST_THREADS=0 HEAD get_patient    # a setting's cost

``BENCH_AB_TOKEN``, when set, is the bearer token of every request (instead of logging in through
NEW), for revisions whose login no longer works on today's schema.

A revision may carry settings after a ``+`` (``REV+NAME=value,NAME=value``): its server runs with
them, so that one commit served two ways compares like two commits.

Each revision (a commit, checked out into a throw-away worktree under .local/ab/) is served by
``clinic-api serve`` as ``make bench`` serves the API, both on one bench database seeded as
``make bench`` seeds it (BENCH_PATIENTS, 100,000 by default) and migrated by this checkout, which
must be the newer of the two: the older code runs on the newer schema. Both get the same token
(logged in through NEW). Each scenario runs BENCH_ROUNDS times (5) on each server, the order
alternating, so that a busy machine's drift falls on both alike; the medians and their ratio are
printed. The full comparison with the peer and the floor stays ``make bench``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run  # noqa: E402
import seed as seeding  # noqa: E402
from scenarios import Context, scenarios  # noqa: E402

AB_DIR = run.ROOT / ".local" / "ab"


def checkout(revision: str) -> Path:
    """A worktree of ``revision`` (made once, kept for the next comparison)."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=run.ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    place = AB_DIR / commit
    if not place.exists():
        AB_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(place), commit], cwd=run.ROOT, check=True,
                       capture_output=True)
    return place


def main(old: str, new: str, wanted: list[str]) -> int:
    os.environ.setdefault("BENCH_PATIENTS", "100000")
    os.environ.setdefault("BENCH_ROUNDS", "5")
    os.environ.setdefault("BENCH_DURATION", "10")
    opts = run.Options.from_env()
    url, where = run.prepare_database("_ab")
    seeded = seeding.seed(url, patients=opts.patients, log=run.log)
    ids = seeding.sample_patient_ids(url, seeded.org_id)
    ids_file = run.RESULTS / "patient_ids.txt"
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    ids_file.write_text("\n".join(ids) + "\n")
    chosen = [s for s in scenarios(seeding.COMMON_TERM, seeding.RARE_SURNAME) if not wanted or s.name in wanted]
    per_org = seeded.patients // seeding.ORGS
    key_file = run.signing_key_file()
    servers = {}
    for label, given in (("old", old), ("new", new)):
        revision, _, overrides = given.partition("+")
        place = checkout(revision)
        settings = dict(item.split("=", 1) for item in overrides.split(",") if item)
        servers[label] = run.start_api(url, opts, key_file, name=f"ab-{label}",
                                       extra_env={"PYTHONPATH": str(place), **settings})
    backends = run.Backends(url)
    try:
        import httpx

        for label, server in servers.items():
            server.wait_ready()
            served = httpx.get(f"{server.base}/openapi.json", timeout=30).json()
            run.log(f"{label}: {len(served['paths'])} paths in its served spec, workers {server.worker_pids()}")
        # A revision older than today's login (its refresh tokens predate sessions) cannot log in
        # on today's schema: BENCH_AB_TOKEN is then a token both revisions accept, signed by hand.
        token = os.environ.get("BENCH_AB_TOKEN") or run.login(servers["new"].base, seeded.admin_email,
                                                                 seeded.password)
        run.log(f"database: {where}; {opts.patients:,} patients; {opts.workers} workers each; "
                f"{opts.rounds} rounds of {opts.duration} s; old {old}, new {new}")
        results = {}
        for scenario in chosen:
            pages = max(1, min(50, per_org // 20))
            ctx = Context(ids=ids, branch_id=seeded.branch_id, max_page=pages, term=scenario.term or "")
            env = run.load_env(scenario, ctx, token, ids_file)
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for number in range(opts.rounds):
                for label in ("old", "new") if number % 2 == 0 else ("new", "old"):
                    result = run.measure(opts, scenario, servers[label], env, url, backends, warm=True)
                    if result["errors"]:
                        raise RuntimeError(f"{label} answered {result['errors']} errors: {result['first_error']}")
                    runs[label].append(result)
            medians = {label: {key: statistics.median(r[key] for r in found)
                               for key in ("rps", "cpu_ms_per_req", "p50_1c_ms", "p99_ms")} for label, found in runs.items()}
            ratio = medians["new"]["rps"] / medians["old"]["rps"]
            cpu = medians["new"]["cpu_ms_per_req"] / medians["old"]["cpu_ms_per_req"]
            run.log(f"{scenario.name}: old {medians['old']['rps']:.0f} req/s, {medians['old']['cpu_ms_per_req']:.3f} "
                    f"CPU ms/req; new {medians['new']['rps']:.0f} req/s, {medians['new']['cpu_ms_per_req']:.3f} "
                    f"CPU ms/req; new/old req/s {ratio:.3f}, CPU {cpu:.3f} "
                    f"(req/s per round old {[r['rps'] for r in runs['old']]}, new {[r['rps'] for r in runs['new']]}); "
                    f"p99 at {opts.connections} connections old {medians['old']['p99_ms']} ms, new {medians['new']['p99_ms']} ms")
            results[scenario.name] = {"medians": medians, "rps_ratio": round(ratio, 3), "cpu_ratio": round(cpu, 3)}
        run.log("BENCH_RESULT " + json.dumps({"old": old, "new": new, "load_average": os.getloadavg()[0],
                                              "results": results}))
        return 0
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
