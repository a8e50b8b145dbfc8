"""The webhook delivery worker (``clinic-api worker``; ``serve`` and ``run`` start one too).

Each thread claims one due delivery with ``FOR UPDATE SKIP LOCKED`` and keeps that transaction
open while it POSTs: the row lock is the claim. A worker killed mid-delivery drops its connection,
PostgreSQL rolls the transaction back, and the delivery is claimed again, with the same
webhook-id, by whichever worker comes next. Several workers (threads or processes, on any
number of hosts) share the queue without coordinating.

Threads wake on ``LISTEN webhook_delivery`` (a trigger notifies at commit) and poll every
WEBHOOK_POLL_INTERVAL_MS as well, so deliveries keep flowing when the listening connection is
lost or cannot work (PgBouncer in transaction mode forwards no notifications).
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import select
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg2
import sqlalchemy as sa
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
USER_AGENT = "clinic-api-webhooks/1"


class Wakeup:
    """A generation counter threads wait on: a ring between a thread's miss and its wait is
    never lost, since the thread waits only while the generation is the one it saw."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    def generation(self) -> int:
        return self._generation

    def ring(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

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


def post(client: httpx.Client, claim: webhooks.Claim, settings: config.Settings) -> Attempt:
    """One signed POST to the claim's URL, to an address checked just now, no redirects, at most
    10 s in all and 64 KB of the answer read."""
    try:
        addresses = webhooks.safe_addresses(claim.url, settings)
    except ApiError as exc:
        return Attempt(error=f"refused: {exc.message}")
    body = claim.body()
    now = dt.datetime.now(dt.timezone.utc)
    parts = urlsplit(claim.url)
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, "host": parts.netloc.rsplit("@", 1)[-1],
               "webhook-id": claim.delivery_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature(claim, body, now)}
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    error = "no address"
    for address in addresses:
        # The checked address goes into the URL; Host and TLS (SNI, certificate) keep the name.
        host = f"[{address}]" if ":" in address else address
        target = urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
        try:
            return _send(client, target, body, headers, parts.hostname, deadline)
        except httpx.ConnectError as exc:
            error = f"connect: {exc}"
        except (httpx.HTTPError, TimeoutError) as exc:
            return Attempt(error=f"{type(exc).__name__}: {exc}"[:500])
    return Attempt(error=error[:500])


def _send(client, target, body, headers, hostname, deadline) -> Attempt:
    remaining = max(deadline - time.monotonic(), 0.1)
    timeout = httpx.Timeout(remaining, connect=min(CONNECT_TIMEOUT_S, remaining))
    with client.stream("POST", target, content=body.encode(), headers=headers, timeout=timeout,
                       extensions={"sni_hostname": hostname}) as response:
        read = 0
        for chunk in response.iter_raw():
            read += len(chunk)
            if read >= RESPONSE_BYTES_READ or time.monotonic() > deadline:
                break  # the status is all that counts; the rest of the body is not read
        return Attempt(status_code=response.status_code)


def backoff_s(attempts_before: int, settings: config.Settings) -> float:
    """Exponential (base, 2x base, 4x base ... up to the maximum) with jitter, so that the
    retries of many deliveries that failed together spread out instead of arriving together."""
    ceiling = min(settings.webhook_retry_base_ms * 2 ** min(attempts_before, 40), settings.webhook_retry_max_ms)
    return ceiling * random.uniform(0.5, 1.0) / 1000


class DeliveryWorker:
    """Delivery threads over one engine, woken by a listener thread."""

    def __init__(self, engine: sa.Engine, settings: config.Settings, *, listen_url: str | None = None):
        self.engine = engine
        self.settings = settings
        self.listen_url = listen_url
        self.stop = threading.Event()
        self.wakeup = Wakeup()
        self._threads: list[threading.Thread] = []

    def start(self) -> "DeliveryWorker":
        for number in range(self.settings.webhook_worker_threads):
            self._threads.append(threading.Thread(target=self._deliver_forever, name=f"webhook-{number}", daemon=True))
        if self.listen_url:
            self._threads.append(threading.Thread(target=self._listen_forever, name="webhook-listen", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def close(self, timeout: float = TOTAL_TIMEOUT_S + 5) -> None:
        """Let each thread finish the delivery it is in, then stop."""
        self.stop.set()
        self.wakeup.ring()
        for thread in self._threads:
            thread.join(timeout)

    def _deliver_forever(self) -> None:
        poll_s = self.settings.webhook_poll_interval_ms / 1000
        with httpx.Client(follow_redirects=False, trust_env=False) as client:
            while not self.stop.is_set():
                seen = self.wakeup.generation()
                try:
                    if self.deliver_next(client):
                        continue
                except sa.exc.SQLAlchemyError:
                    log.exception("webhook delivery: database error")
                self.wakeup.wait(seen, poll_s)

    def deliver_next(self, client: httpx.Client) -> bool:
        """Claim, send and record one due delivery; False when none is due."""
        with self.engine.begin() as conn:
            claim = webhooks.claim(conn)
            if claim is None:
                return False
            started = time.monotonic()
            attempt = post(client, claim, self.settings)
            self._record(conn, claim, attempt, time.monotonic() - started)
        return True

    def _record(self, conn, claim: webhooks.Claim, attempt: Attempt, elapsed: float) -> None:
        entry = {"delivery_id": claim.delivery_id, "subscription_id": claim.subscription_id,
                 "org_id": claim.org_id, "event_type": claim.event_type, "attempt": claim.attempts + 1,
                 "status": attempt.status_code, "duration_ms": round(elapsed * 1000, 2)}
        if attempt.succeeded:
            webhooks.record_success(conn, claim, attempt.status_code)
            outcome = "succeeded"
        else:
            delay = backoff_s(claim.attempts, self.settings)
            status, disabled = webhooks.record_failure(conn, claim, status_code=attempt.status_code,
                                                       error=attempt.error, delay_s=delay,
                                                       window_s=self.settings.webhook_retry_window_s)
            outcome = "failed" if status == "failed" else "retrying"
            entry.update(error=attempt.error, retry_in_s=round(delay, 3) if status == "pending" else None,
                         subscription_disabled=disabled)
        observability.WEBHOOK_DELIVERIES.labels(outcome).inc()
        log.info("webhook delivery %s", outcome, extra={"access": {**entry, "outcome": outcome}})

    def _listen_forever(self) -> None:
        while not self.stop.is_set():
            try:
                self._listen()
            except psycopg2.Error as exc:
                log.warning("webhook listener lost its connection (%s); polling meanwhile", exc)
            self.stop.wait(self.settings.webhook_poll_interval_ms / 1000)

    def _listen(self) -> None:
        connection = psycopg2.connect(self.listen_url, connect_timeout=self.settings.db_connect_timeout_s,
                                      application_name="clinic-api-webhooks")
        try:
            connection.autocommit = True
            connection.cursor().execute(f"LISTEN {CHANNEL}")
            self.wakeup.ring()  # anything committed before LISTEN took effect
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
