"""The webhook delivery worker (``clinic-api worker``; ``serve`` and ``run`` start one too).

A thread claims a batch of due deliveries in one short transaction: each gets a lease
(``locked_until``) long enough for the whole batch to be sent. No transaction is open while it
POSTs. Each subscription's deliveries in the batch are sent in turn, different subscriptions side
by side (a slow receiver delays its own deliveries only), and each subscription's outcomes are
recorded by one statement. A worker killed mid-delivery records nothing: when its lease runs out
the delivery is claimed again, with the same webhook-id, by whichever worker comes next. Several
workers (threads or processes, on any number of hosts) share the queue without coordinating.

Threads wake on ``LISTEN webhook_delivery`` (a trigger notifies at commit, unless a worker has
just found deliveries and so claims again within GATHER_S anyway) and poll every
WEBHOOK_POLL_INTERVAL_MS as well, so deliveries keep flowing when the listening connection is
lost or cannot work (PgBouncer in transaction mode forwards no notifications). One more thread
deletes deliveries older than WEBHOOK_DELIVERY_RETENTION_DAYS, in small batches.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import random
import select
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import sqlalchemy as sa
import urllib3
from standardwebhooks.webhooks import Webhook

import config
from middleware import observability
from errors import ApiError
from models import webhooks

log = logging.getLogger("clinic_api.webhooks")

CONNECT_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 10.0
RESPONSE_BYTES_READ = 64 * 1024
CHANNEL = "webhook_delivery"
# The worker's connections in pg_stat_activity (its pool's and the listener's), apart from the API's.
APPLICATION_NAME = "clinic-api-webhooks"
USER_AGENT = "clinic-api-webhooks/1"
# Deliveries one claim takes: one claim and one record statement per batch instead of per event.
BATCH_SIZE = 50
# No POST of a batch starts later than this after its claim; what is left is handed back unsent,
# so that a batch (a slow receiver's above all) never outlasts its lease.
SEND_BUDGET_S = 2.0
LEASE_MARGIN_S = 3.0
# A thread that found deliveries waits this long from its claim before it claims again, unless its
# batch was full: under load, the commits of that time make one batch (one claim, one record)
# instead of a claim each. The first event after a quiet time is claimed at once.
GATHER_S = 0.05
# How late a thread may claim again before the others stop counting on it (it is stuck sending to a
# slow receiver, say) and a ring wakes another.
PROMISE_SLACK_S = 0.5
# The prune runs at start and then this often; each batch is a short transaction of its own, with
# a pause between batches so that deleting a large backlog never crowds out the deliveries.
PRUNE_INTERVAL_S = 3600.0
PRUNE_BATCH = 500
PRUNE_PAUSE_S = 0.1


class Wakeup:
    """A generation counter threads wait on: a ring between a thread's miss and its wait is
    never lost, since the thread waits only while the generation is the one it saw.

    A ring wakes one waiting thread, and none while a busy thread has promised to claim again
    soon (``promise``): under load one thread takes each burst of commits as one batch, instead
    of every thread claiming a delivery or two. A promise not kept in time (its thread is stuck
    on a slow receiver) no longer holds the others back."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._promises: dict[int, float] = {}  # thread id -> monotonic time of its next claim

    def generation(self) -> int:
        return self._generation

    def ring(self, *, everyone: bool = False, another: bool = False) -> None:
        """Note a change; wake every thread, one more (``another``: a full batch leaves more due),
        or one unless a promise holds."""
        with self._condition:
            self._generation += 1
            if everyone:
                self._condition.notify_all()
            elif another or not self._promised():
                self._condition.notify()

    def _promised(self) -> bool:
        now = time.monotonic()
        return any(at >= now for at in self._promises.values())

    def promise(self, at: float | None) -> None:
        """This thread claims again by ``at`` (monotonic); None: it waits to be woken."""
        with self._condition:
            if at is None:
                self._promises.pop(threading.get_ident(), None)
            else:
                self._promises[threading.get_ident()] = at

    def wait(self, seen: int, timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout)


class Attempt:
    """What one POST came to: a status code, or why there was none."""

    def __init__(self, status_code: int | None = None, error: str | None = None):
        self.status_code = status_code
        self.error = error

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signature(claim: webhooks.Claim, body: str, at: dt.datetime) -> str:
    """``v1,<base64 HMAC>`` per signing key, space separated (two during a rotation)."""
    return " ".join(Webhook(key).sign(claim.delivery_id, at, body) for key in claim.secrets)


def target_addresses(url: str, settings: config.Settings) -> tuple[list[str], str | None]:
    """(the addresses ``url`` may be sent to, checked just now; or why none: every attempt of it fails)."""
    try:
        return webhooks.safe_addresses(url, settings), None
    except ApiError as exc:
        return [], f"refused: {exc.message}"


class Targets:
    """Keep-alive connections to the checked addresses of webhook receivers, shared by a worker's
    threads: one urllib3 pool per (scheme, address, port, host name), each pool as large as the
    threads that may send to it at once.

    urllib3 connects to the address it is given, while the Host header, SNI and the certificate
    check keep the URL's name (``server_hostname``), so the checked address is the one sent to."""

    KEPT = 256  # pools kept; past that (a worker serving many receivers) they are all dropped

    def __init__(self, size: int):
        self.size = size
        self._pools: dict[tuple, urllib3.connectionpool.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def pool(self, scheme: str, address: str, port: int, hostname: str) -> urllib3.connectionpool.HTTPConnectionPool:
        key = (scheme, address, port, hostname)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= self.KEPT:
                    self.close()
                pool = self._pools[key] = self._new_pool(*key)
        return pool

    def _new_pool(self, scheme, address, port, hostname):
        options = {"maxsize": self.size, "block": False, "retries": False}
        if scheme == "https":
            # urllib3's own context: certificates required, checked against the name, the
            # system's trusted authorities (SSL_CERT_FILE, if set).
            return urllib3.HTTPSConnectionPool(address, port, server_hostname=hostname, **options)
        return urllib3.HTTPConnectionPool(address, port, **options)

    def close(self) -> None:
        for pool in list(self._pools.values()):
            pool.close()
        self._pools.clear()


def post(targets: Targets, claim: webhooks.Claim, addresses: list[str]) -> Attempt:
    """One signed POST to the claim's URL, to ``addresses`` (checked by ``target_addresses``), no
    redirects, at most 10 s in all and 64 KB of the answer read."""
    text = claim.body()
    body = text.encode()
    now = dt.datetime.now(dt.timezone.utc)
    parts = urlsplit(claim.url)
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, "host": parts.netloc.rsplit("@", 1)[-1],
               "webhook-id": claim.delivery_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature(claim, text, now)}
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    error = "no address"
    for address in addresses:
        pool = targets.pool(parts.scheme, address, port, parts.hostname)
        try:
            return _send(pool, target, body, headers, deadline)
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
            error = f"connect: {exc}"
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Attempt(error=f"{type(exc).__name__}: {exc}"[:500])
    return Attempt(error=error[:500])


def _send(pool, target, body, headers, deadline) -> Attempt:
    remaining = max(deadline - time.monotonic(), 0.1)
    # urllib3 rather than httpx: a POST was most of the worker's CPU per event, and urllib3's
    # costs about half of httpx's (decision record on webhook batches).
    response = pool.urlopen("POST", target, body=body, headers=headers, redirect=False, retries=False,
                            timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, remaining), read=remaining),
                            preload_content=False, decode_content=False)
    try:
        read = 0
        for chunk in response.stream(16 * 1024, decode_content=False):
            read += len(chunk)
            if read >= RESPONSE_BYTES_READ or time.monotonic() > deadline:
                response.close()  # the status is all that counts; the rest of the body is not read
                break
        return Attempt(status_code=response.status)
    finally:
        response.release_conn()


def backoff_s(attempts_before: int, settings: config.Settings) -> float:
    """Exponential (base, 2x base, 4x base ... up to the maximum) with jitter, so that the
    retries of many deliveries that failed together spread out instead of arriving together."""
    ceiling = min(settings.webhook_retry_base_ms * 2 ** min(attempts_before, 40), settings.webhook_retry_max_ms)
    return ceiling * random.uniform(0.5, 1.0) / 1000


def lease_s() -> float:
    """How long a batch is leased: its last POST starts within SEND_BUDGET_S and takes at most the
    target's DNS check and TOTAL_TIMEOUT_S. A lease that ran out while its worker still sends
    only costs a second attempt with the same webhook-id, never a lost one."""
    return SEND_BUDGET_S + webhooks.RESOLVE_TIMEOUT_S + TOTAL_TIMEOUT_S + LEASE_MARGIN_S


class DeliveryWorker:
    """Delivery threads over one engine, woken by a listener thread, and a pruning thread."""

    def __init__(self, engine: sa.Engine, settings: config.Settings, *, listen_url: str | None = None):
        self.engine = engine
        self.settings = settings
        self.listen_url = listen_url
        self.stop = threading.Event()
        self.wakeup = Wakeup()
        self._threads: list[threading.Thread] = []
        # The subscriptions of a batch but its first are sent by these, beside the claiming thread.
        self._senders = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.webhook_worker_threads * 4, thread_name_prefix="webhook-send")
        self.targets = Targets(size=settings.webhook_worker_threads * 5)  # every thread that sends

    def start(self) -> "DeliveryWorker":
        for number in range(self.settings.webhook_worker_threads):
            self._threads.append(threading.Thread(target=self._deliver_forever, name=f"webhook-{number}", daemon=True))
        if self.listen_url:
            self._threads.append(threading.Thread(target=self._listen_forever, name="webhook-listen", daemon=True))
        if self.settings.webhook_delivery_retention_days:
            self._threads.append(threading.Thread(target=self._prune_forever, name="webhook-prune", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def close(self, timeout: float = TOTAL_TIMEOUT_S + 5) -> None:
        """Let each thread finish the POST it is in, hand back the rest of its batch, then stop."""
        self.stop.set()
        self.wakeup.ring(everyone=True)
        for thread in self._threads:
            thread.join(timeout)
        self._senders.shutdown(wait=False)
        self.targets.close()

    def _deliver_forever(self) -> None:
        poll_s = self.settings.webhook_poll_interval_ms / 1000
        while not self.stop.is_set():
            seen = self.wakeup.generation()
            claimed_at = time.monotonic()
            try:
                claimed = self.deliver_next()
            except sa.exc.SQLAlchemyError:
                log.exception("webhook delivery: database error")
                claimed = 0
            if claimed == BATCH_SIZE:
                continue
            if claimed:
                # Under way: the commits until the next claim gather into its batch.
                self.stop.wait(GATHER_S - (time.monotonic() - claimed_at))
                continue
            self.wakeup.promise(None)
            self.wakeup.wait(seen, poll_s)

    def deliver_next(self) -> int:
        """Claim, send and record one batch of due deliveries: how many were claimed."""
        with self.engine.begin() as conn:
            token, claims = webhooks.claim(conn, limit=BATCH_SIZE, lease_s=lease_s(),
                                           promise_s=GATHER_S + PROMISE_SLACK_S)
        if not claims:
            return 0
        self.wakeup.promise(time.monotonic() + GATHER_S + PROMISE_SLACK_S)
        if len(claims) == BATCH_SIZE:
            self.wakeup.ring(another=True)  # more may be due: another thread claims the next batch meanwhile
        claimed_at = time.monotonic()
        by_subscription: dict[str, list[webhooks.Claim]] = {}
        for claim in claims:
            by_subscription.setdefault(claim.subscription_id, []).append(claim)
        first, *others = by_subscription.values()
        elsewhere = [self._senders.submit(self._deliver, token, group, claimed_at) for group in others]
        self._deliver(token, first, claimed_at)
        for future in elsewhere:
            future.result()
        return len(claims)

    def _deliver(self, token: str, claims: list[webhooks.Claim],
                 claimed_at: float) -> None:
        """Send one subscription's claimed deliveries in turn and record them in one statement."""
        outcomes, durations = [], {}

        def late() -> bool:
            return self.stop.is_set() or time.monotonic() - claimed_at > SEND_BUDGET_S

        started_late = late()  # queued behind other subscriptions' sending, say
        if not started_late:
            # One check of the target serves the batch: its POSTs start within seconds of it.
            addresses, refused = target_addresses(claims[0].url, self.settings)
        for number, claim in enumerate(claims):
            # The first is attempted however long the check took: a slow DNS must count as a
            # failed attempt, not hand the delivery back for ever.
            if started_late or (number and late()):
                outcomes.append(webhooks.Outcome(claim, sent=False))
                continue
            started = time.monotonic()
            attempt = Attempt(error=refused) if refused else post(self.targets, claim, addresses)
            durations[claim.delivery_id] = time.monotonic() - started
            outcomes.append(webhooks.Outcome(
                claim, succeeded=attempt.succeeded, status_code=attempt.status_code, error=attempt.error,
                delay_s=0.0 if attempt.succeeded else backoff_s(claim.attempts, self.settings)))
        with self.engine.begin() as conn:
            recorded = webhooks.record(conn, token, outcomes, window_s=self.settings.webhook_retry_window_s)
        for outcome in outcomes:
            if outcome.sent:
                self._log(outcome, recorded, durations[outcome.claim.delivery_id])

    def _log(self, outcome: webhooks.Outcome, recorded: webhooks.Recorded, elapsed: float) -> None:
        claim = outcome.claim
        entry = {"delivery_id": claim.delivery_id, "subscription_id": claim.subscription_id,
                 "org_id": claim.org_id, "event_type": claim.event_type, "attempt": claim.attempts + 1,
                 "status": outcome.status_code, "duration_ms": round(elapsed * 1000, 2)}
        status = recorded.statuses.get(claim.delivery_id)
        if status is None:
            # Sent, but after the lease ran out: another worker has claimed it since and records it.
            log.warning("webhook delivery outlived its lease", extra={"access": {**entry, "outcome": "lease_lost"}})
            return
        if outcome.succeeded:
            result = "succeeded"
        else:
            result = "failed" if status == "failed" else "retrying"
            entry.update(error=outcome.error, retry_in_s=round(outcome.delay_s, 3) if status == "pending" else None,
                         subscription_disabled=recorded.disabled)
        observability.WEBHOOK_DELIVERIES.labels(result).inc()
        log.info("webhook delivery %s", result, extra={"access": {**entry, "outcome": result}})

    def _prune_forever(self) -> None:
        while not self.stop.is_set():
            try:
                self.prune()
            except sa.exc.SQLAlchemyError:
                log.exception("webhook delivery prune: database error")
            self.stop.wait(PRUNE_INTERVAL_S)

    def prune(self) -> tuple[int, int]:
        """Delete deliveries older than the retention, and the events they leave, batch by batch:
        (deliveries, events) deleted."""
        deliveries = events = 0
        while not self.stop.is_set():
            with self.engine.begin() as conn:
                done = webhooks.prune(conn, retention_days=self.settings.webhook_delivery_retention_days,
                                      limit=PRUNE_BATCH)
            if done is None:  # another worker prunes now
                break
            deliveries, events = deliveries + done[0], events + done[1]
            if done[0] < PRUNE_BATCH:
                break
            self.stop.wait(PRUNE_PAUSE_S)
        if deliveries:
            log.info("webhook deliveries pruned", extra={"access": {
                "deliveries": deliveries, "events": events,
                "retention_days": self.settings.webhook_delivery_retention_days}})
        return deliveries, events

    def _listen_forever(self) -> None:
        while not self.stop.is_set():
            try:
                self._listen()
            except psycopg2.Error as exc:
                log.warning("webhook listener lost its connection (%s); polling meanwhile", exc)
            self.stop.wait(self.settings.webhook_poll_interval_ms / 1000)

    def _listen(self) -> None:
        connection = psycopg2.connect(self.listen_url, connect_timeout=self.settings.db_connect_timeout_s,
                                      application_name=APPLICATION_NAME)
        try:
            connection.autocommit = True
            connection.cursor().execute(f"LISTEN {CHANNEL}")
            self.wakeup.ring(everyone=True)  # anything committed before LISTEN took effect
            while not self.stop.is_set():
                if select.select([connection], [], [], 1.0)[0]:
                    connection.poll()
                    if connection.notifies:
                        connection.notifies.clear()
                        self.wakeup.ring()
        finally:
            connection.close()


def listen_url_of(engine: sa.Engine) -> str:
    """The libpq URL of ``engine``'s database, for the listening connection."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
