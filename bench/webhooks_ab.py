"""Create throughput with and without a webhook subscription, and commit-to-delivery latency.

    .venv/bin/python bench/webhooks_ab.py            # DATABASE_URL's server (or embedded), ~2 minutes

``make bench`` runs the same measurement after its scenarios (``measure``) and reports its goals.

One ``clinic-api serve`` (with its delivery worker, as deployed by default) on a fresh bench
database, a receiver on loopback answering 200, and two organizations: A without webhooks, B
with one active subscription to ``patient.created``. The same load (POST /patients from
BENCH_CONNECTIONS keep-alive connections for BENCH_DURATION seconds) runs against A and B in
turn, BENCH_ROUNDS times, so that the machine's load drifts over both alike; the ratio of the
medians is the cost of events. B's deliveries are counted: every create must arrive. Then
BENCH_LATENCY_SAMPLES creates in B, one at a time, time the answer of the create to the arrival
of its event at the receiver.

The same rounds run again with the delivery side apart (BENCH_WEBHOOK_WORKER_APART, on by
default; it needs two cores): the API's workers and their PostgreSQL backends pinned to one core,
the delivery worker, its backends, the receiver and the load generator to the rest, as when the
worker runs on a host of its own. That ratio is what an event costs the API's own processes.
"""
from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import Backends, login, prepare_database, process_cpu_seconds, settle, signing_key_file, start_api  # noqa: E402


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


RECEIVER = """
import http.server, json, sys, threading, time

# print() writes the text and the newline apart: two handler threads printing at once ran their
# lines together, and the bench counted fewer events than had arrived.
written = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        line = f"{body['data']['id']} {time.monotonic()}\\n"
        with written:
            sys.stdout.write(line)
            sys.stdout.flush()
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Receiver:
    """A receiver in a process of its own (in this one, it would take the GIL from the load's
    threads and slow the very runs it serves), reporting each event's id and arrival time
    (CLOCK_MONOTONIC, the same clock as this process's)."""

    def __init__(self):
        import subprocess

        self.arrivals: dict[str, float] = {}
        self.received = 0  # requests, duplicates included
        self.process = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}/hooks"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            fields = line.split()
            if len(fields) != 2:
                print("receiver:", line.rstrip(), file=sys.stderr)
                continue
            event_id, at = fields
            self.received += 1
            self.arrivals.setdefault(event_id, float(at))

    @property
    def count(self) -> int:
        return len(self.arrivals)

    def stop(self):
        self.process.terminate()


def _cpu(api, receiver: Receiver, backends: Backends) -> dict[str, float | None]:
    """CPU seconds so far of each part an event touches: the API's workers and their PostgreSQL
    backends, the delivery worker and its backends, the receiver, and this process (the load)."""
    worker = api.delivery_worker_pid()
    usage = os.times()
    return {"api workers": api.cpu_seconds(), "their postgres backends": backends.cpu_seconds("clinic-api"),
            "delivery worker": process_cpu_seconds(worker) if worker else None,
            "its postgres backends": backends.cpu_seconds("clinic-api-webhooks"),
            "receiver": process_cpu_seconds(receiver.process.pid), "load generator": usage.user + usage.system}


def _pin(pids: list[int], cpus: list[int]) -> None:
    """Every thread of each process in ``pids`` to ``cpus`` (affinity is a thread's own; threads
    started later inherit their starter's)."""
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                os.sched_setaffinity(int(thread), cpus)
            except OSError:
                pass  # ended meanwhile


def _place(api, receiver: Receiver, backends: Backends, api_cpus: list[int], event_cpus: list[int]) -> None:
    """The API's workers and their backends on ``api_cpus``; the delivery worker, its backends,
    the receiver and this process (the load) on ``event_cpus``."""
    _pin(api.worker_pids() + backends.pids("clinic-api"), api_cpus)
    worker = api.delivery_worker_pid()
    _pin(([worker] if worker else []) + backends.pids("clinic-api-webhooks") + [receiver.process.pid, os.getpid()],
         event_cpus)


def _rounds(url: str, api, receiver: Receiver, backends: Backends, orgs: dict, *, rounds: int, duration: int,
            connections: int, log, placement: tuple[list[int], list[int]] | None = None) -> dict:
    """A's and B's create runs, interleaved, ``placement`` (the API's cores, the event's) renewed
    before each run, since pools may have opened connections since."""
    runs: dict[str, list[float]] = {"A": [], "B": []}
    costs: dict[str, list[dict]] = {"A": [], "B": []}
    created_in_b = 0
    for number in range(rounds):
        for name in ("A", "B") if number % 2 == 0 else ("B", "A"):
            settle(url)
            if placement:
                _place(api, receiver, backends, *placement)
            before = _cpu(api, receiver, backends)
            rate, count = create_load(api.port, *orgs[name], connections, duration)
            time.sleep(0.5)  # the worker sends what the last creates left
            after = _cpu(api, receiver, backends)
            costs[name].append({part: round((after[part] - before[part]) * 1000 / count, 3)
                                for part in after if after[part] is not None and before[part] is not None})
            runs[name].append(rate)
            created_in_b += count if name == "B" else 0
            log(f"  round {number + 1} {'without' if name == 'A' else 'with   '} a subscription: {rate:7.1f} creates/s")
    a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
    cost = {name: {part: round(statistics.median(run.get(part, 0) for run in costs[name]), 3) for part in costs[name][0]}
            for name in costs}
    return {"without": runs["A"], "with": runs["B"], "ratio": round(b / a, 3), "created_in_b": created_in_b,
            "cpu_ms_per_create": {"without": cost["A"], "with": cost["B"]}}


def _report(title: str, measured: dict, log) -> None:
    a, b = statistics.median(measured["without"]), statistics.median(measured["with"])
    log(f"median creates/s{title} without: {a:.1f}, with one subscription: {b:.1f}, ratio {measured['ratio']:.3f}")
    cost = measured["cpu_ms_per_create"]
    for part in cost["with"]:
        log(f"  CPU per create, {part}: {cost['without'].get(part, 0):.3f} ms without a subscription, "
            f"{cost['with'][part]:.3f} ms with one")


def create_load(port: int, token: str, branch_id: str, connections: int, duration: float) -> tuple[float, int]:
    """(creates per second, creates) from ``connections`` keep-alive connections for ``duration`` seconds."""
    done = [0] * connections
    failed = []
    body = json.dumps({"branch_id": branch_id, "name": "Bench Patient"})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    stop_at = time.monotonic() + duration

    def drive(slot: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            conn.request("POST", "/patients", body, headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 201:
                failed.append(answer.status)
                return
            done[slot] += 1
        conn.close()

    threads = [threading.Thread(target=drive, args=(slot,)) for slot in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise RuntimeError(f"creates failed with {failed[:3]}")
    return sum(done) / (time.monotonic() - started), sum(done)


def measure(*, rounds: int, duration: int, connections: int, samples: int, workers: int, log=print,
            worker_apart: bool = True) -> dict:
    """The cost of one subscription on creates, and commit-to-delivery latency (module docstring)."""
    everywhere = sorted(os.sched_getaffinity(0))
    import httpx

    url, where = prepare_database("_webhooks")
    receiver = Receiver()
    opts = type("Options", (), {"workers": workers})()
    api = start_api(url, opts, signing_key_file(), name="webhooks_ab",
                    # the receiver is plain http on loopback
                    extra_env={"APP_ENV": "development", "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"})
    try:
        api.wait_ready()
        from cli import _with_app_engine
        import config
        from models import accounts

        settings = config.load({"DATABASE_URL": url, "APP_ENV": "test"}, serving=False)
        orgs = {}
        for name in ("A", "B"):
            email = f"bench-{name.lower()}-{os.getpid()}@example.com"
            ids = _with_app_engine(settings, url, lambda: accounts.create_organization(
                name=f"Webhook bench {name}", branch_name="Main", admin_email=email,
                admin_password="bench password 123"))
            orgs[name] = (login(api.base, email, "bench password 123"), ids["branch_id"])
        token_b = orgs["B"][0]
        subscribed = httpx.post(api.base + "/webhooks", json={"url": receiver.url, "events": ["patient.created"]},
                                headers={"Authorization": f"Bearer {token_b}"})
        assert subscribed.status_code == 201, subscribed.text
        log(f"database: {where}; {workers} API workers + 1 delivery worker; "
            f"{connections} connections, {duration} s per run, {rounds} rounds")
        backends = Backends(url)
        shared = _rounds(url, api, receiver, backends, orgs, rounds=rounds, duration=duration, connections=connections,
                         log=log)
        apart = None
        if worker_apart and len(everywhere) >= 2:
            log("  the same rounds with the API and its backends on one core, the delivery worker, its backends, "
                "the receiver and the load on the other")
            try:
                apart = _rounds(url, api, receiver, backends, orgs, rounds=rounds, duration=duration,
                                connections=connections, log=log, placement=(everywhere[:1], everywhere[1:]))
            finally:
                _place(api, receiver, backends, everywhere, everywhere)
        created_in_b = shared["created_in_b"] + (apart["created_in_b"] if apart else 0)
        deadline = time.monotonic() + 120
        while receiver.count < created_in_b and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        delivered, requests = receiver.count, receiver.received
        latencies = []
        with httpx.Client(headers={"Authorization": f"Bearer {token_b}"}) as client:
            for _ in range(samples):
                created = client.post(api.base + "/patients", json={"branch_id": orgs["B"][1], "name": "Latency"})
                answered = time.monotonic()
                patient_id = created.json()["data"]["id"]
                while patient_id not in receiver.arrivals and time.monotonic() < answered + 10:
                    time.sleep(0.001)
                latencies.append(receiver.arrivals.get(patient_id, float("inf")) - answered)
        backends.close()
        latencies.sort()
        result = {"without": shared["without"], "with": shared["with"], "ratio": shared["ratio"],
                  "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                  "latency_p90_ms": round(latencies[int(len(latencies) * 0.9)] * 1000, 1),
                  "creates_in_b": created_in_b, "events_received": delivered, "event_requests": requests,
                  "cpu_ms_per_create": shared["cpu_ms_per_create"],
                  "worker_apart": apart and {key: apart[key] for key in ("without", "with", "ratio", "cpu_ms_per_create")}}
        for title, measured in (("", shared), (" (worker apart)", apart)):
            if measured:
                _report(title, measured, log)
        log(f"events received for B's {created_in_b} creates: {delivered} distinct, in {requests} requests")
        log(f"create answer to delivery, {samples} sequential creates: p50 {result['latency_p50_ms']} ms, "
            f"p90 {result['latency_p90_ms']} ms, max {latencies[-1] * 1000:.1f} ms")
        return result
    finally:
        api.stop()
        receiver.stop()


def main() -> int:
    result = measure(rounds=_int_env("BENCH_ROUNDS", 5), duration=_int_env("BENCH_DURATION", 8),
                     connections=_int_env("BENCH_CONNECTIONS", 16), samples=_int_env("BENCH_LATENCY_SAMPLES", 100),
                     workers=_int_env("BENCH_WORKERS", os.cpu_count() or 1),
                     worker_apart=os.environ.get("BENCH_WEBHOOK_WORKER_APART", "true") != "false")
    print("BENCH_RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
