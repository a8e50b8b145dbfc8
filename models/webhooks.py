"""Webhook subscriptions and their deliveries: what the API offers, what the delivery worker
(``worker.py``) claims and records, and which targets are safe to send to."""
from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import ipaddress
import json
import secrets
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import sqlalchemy as sa

import config
import state
from errors import ApiError
from models import audit, crud, events
from models.tenancy import Caller, scoped
from models.database import current_engine
from models.idempotency import IdempotentRequest
from models.tables import outbox_event, webhook_delivery, webhook_subscription


def new_secret() -> str:
    """A Standard Webhooks signing key: ``whsec_`` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- safe targets -------------------------------------------------------------------------------

_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")
RESOLVE_TIMEOUT_S = 2.0


def _refused(message: str) -> ApiError:
    return ApiError("WEBHOOK_TARGET_REFUSED", message, field="url")


def safe_addresses(url: str, settings: config.Settings | None = None) -> list[str]:
    """The addresses ``url`` may be sent to, or WEBHOOK_TARGET_REFUSED.

    https only outside development; every address the host resolves to must be a public one
    (loopback, private, link-local, which holds the cloud metadata address 169.254.169.254,
    multicast and reserved ranges are refused), unless WEBHOOK_ALLOW_PRIVATE_TARGETS=true. The
    worker connects to the addresses checked here, so a name that resolves elsewhere between the
    check and the connection (DNS rebinding) gains nothing.
    """
    settings = settings or config.current()
    parts = urlsplit(url)
    schemes = ("http", "https") if settings.is_development else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise _refused(f"the URL must be {' or '.join(schemes)} with a host")
    if parts.username or parts.password:
        raise _refused("the URL must not hold credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise _refused("the URL's port is not valid") from exc
    try:
        found = _resolver.submit(socket.getaddrinfo, parts.hostname, port, type=socket.SOCK_STREAM)
        addresses = sorted({info[4][0] for info in found.result(timeout=RESOLVE_TIMEOUT_S)})
    except (OSError, UnicodeError, concurrent.futures.TimeoutError) as exc:
        raise _refused(f"the host {parts.hostname} does not resolve") from exc
    if not settings.webhook_allow_private_targets:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if not ip.is_global or ip.is_multicast:
                raise _refused(f"the host {parts.hostname} resolves to a non-public address ({address})")
    return addresses


# --- the subscription endpoints -----------------------------------------------------------------

def _subscriptions() -> crud.Resource:
    """The subscriptions' descriptor as the app completed it from the spec."""
    return state.current().resources["webhook"]


def _shown_delivery_columns() -> list:
    """A delivery's columns as the API shows them (without the worker's lease)."""
    return state.current().resources["webhook_delivery"].public_columns


def subscribe(caller: Caller, body: Mapping[str, Any], *,
              idempotency: IdempotentRequest | None = None) -> dict:
    """A new subscription, with its signing secret (shown only in this answer and its replays)."""
    safe_addresses(body["url"])
    created = crud.create_row(_subscriptions(), caller, body, idempotency=idempotency)
    s = webhook_subscription
    with current_engine().connect() as conn:
        # Read back, not kept: a replay's stored answer holds no secret, and none is stored twice.
        secret = conn.execute(sa.select(s.c.secret)
                              .where(s.c.id == created["id"], *scoped(s, caller.org_id, deleted_too=True))).scalar_one()
    return {**created, "secret": secret}


def change(caller: Caller, subscription_id: str, body: Mapping[str, Any], *,
           expect: crud.Precondition | None = None) -> dict:
    """Change a subscription; with ``rotate_secret`` (or a new ``secret``) the answer shows the key."""
    body = dict(body)
    if body.pop("rotate_secret", False) and not body.get("secret"):
        body["secret"] = new_secret()
    if "url" in body:
        safe_addresses(body["url"])
    changed = crud.update_row(_subscriptions(), caller, subscription_id, body, expect=expect)
    return {**changed, "secret": body["secret"]} if "secret" in body else changed


def _live_subscription(conn, caller: Caller, subscription_id: str) -> Mapping[str, Any]:
    s = webhook_subscription
    found = conn.execute(
        sa.select(s.c.id, s.c.status).where(s.c.id == subscription_id, *scoped(s, caller.org_id))
    ).mappings().first()
    if found is None:
        raise ApiError("NOT_FOUND", "webhook not found")
    return found


def _window() -> dt.timedelta:
    return dt.timedelta(seconds=config.current().webhook_retry_window_s)


def retry(caller: Caller, subscription_id: str, delivery_id: str) -> dict:
    """Queue a delivery again now, same webhook-id, with a new retry window."""
    d = webhook_delivery
    with current_engine().begin() as conn:
        _live_subscription(conn, caller, subscription_id)
        row = conn.execute(
            d.update()
            .where(d.c.id == delivery_id, d.c.subscription_id == subscription_id, *scoped(d, caller.org_id))
            .values(status="pending", next_attempt_at=sa.func.now(), give_up_at=sa.func.now() + _window(),
                    first_attempt_at=None,
                    updated_at=sa.func.now())
            .returning(*_shown_delivery_columns())
        ).mappings().first()
        if row is None:
            raise ApiError("NOT_FOUND", "webhook_delivery not found")
        audit.record_for(conn, caller, "retry", "webhook_delivery", delivery_id)
    return dict(row)


def ping(caller: Caller, subscription_id: str) -> dict:
    """Queue a ``webhook.ping`` event for this subscription alone."""
    with current_engine().begin() as conn:
        subscription = _live_subscription(conn, caller, subscription_id)
        if subscription["status"] != "active":
            raise ApiError("BUSINESS_RULE_VIOLATION", f"the webhook is {subscription['status']}", field="status")
        event_id = conn.execute(
            outbox_event.insert().values(org_id=caller.org_id, type=events.PING, resource="webhook",
                                         resource_id=subscription_id, record={"id": subscription_id})
            .returning(outbox_event.c.id)
        ).scalar_one()
        row = conn.execute(
            webhook_delivery.insert().values(org_id=caller.org_id, subscription_id=subscription_id,
                                             event_id=event_id, event_type=events.PING,
                                             resource_id=subscription_id,
                                             give_up_at=sa.func.now() + _window())
            .returning(*_shown_delivery_columns())
        ).mappings().one()
    return dict(row)


# --- the delivery worker's side -----------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """A delivery leased to this worker (``claim``) until it records the attempt (``record``) or
    the lease runs out."""

    delivery_id: str
    org_id: str
    subscription_id: str
    event_id: int
    attempts: int
    give_up_at: dt.datetime
    url: str
    secrets: tuple[str, ...]
    include: str
    event_type: str
    resource: str
    resource_id: str
    record: Mapping[str, Any]
    changed: tuple[str, ...]
    occurred_at: dt.datetime

    def body(self) -> str:
        """The event as JSON; the same text on every attempt."""
        data: dict[str, Any] = {"resource": self.resource, "id": self.resource_id, "changed": list(self.changed)}
        data.update({k: v for k, v in self.record.items() if k.endswith("_id") and k not in _NOT_REFERENCES})
        if self.include == "full":
            data["record"] = dict(self.record)
        return json.dumps({"type": self.event_type, "timestamp": self.occurred_at.isoformat(), "data": data},
                          separators=(",", ":"))


# Ids of a record that are not references to other records.
_NOT_REFERENCES = frozenset({"org_id"})

# Up to :limit of the oldest due deliveries of active subscriptions whose record has no earlier
# event still pending for the subscription (in order per record: a batch holds at most one
# delivery per record, and a record's next event waits until this one is recorded), and that no
# live lease holds. SKIP LOCKED: two workers claiming at once never wait on each other nor take
# the same row; the row lock lasts only as long as this statement's transaction, the lease
# (locked_until) for the sending. The commit does not wait for the WAL flush (set_config, local to
# the transaction, without a round trip of its own): a lease lost in a crash of the server lets
# another worker send the delivery again, which at-least-once allows.
_CLAIM = sa.text("""
    WITH due AS (
      SELECT d.id
        FROM webhook_delivery d
        JOIN webhook_subscription s ON s.id = d.subscription_id AND s.org_id = d.org_id
       WHERE d.status = 'pending'
         AND d.next_attempt_at <= now()
         AND (d.locked_until IS NULL OR d.locked_until <= now())
         AND s.status = 'active' AND s.deleted_at IS NULL
         AND NOT EXISTS (SELECT 1 FROM webhook_delivery earlier
                          WHERE earlier.subscription_id = d.subscription_id
                            AND earlier.resource_id = d.resource_id
                            AND earlier.status = 'pending'
                            AND earlier.event_id < d.event_id)
       ORDER BY d.next_attempt_at
       LIMIT :limit
         FOR UPDATE OF d SKIP LOCKED),
    -- Commits until this worker's next claim wake no worker (sql/0030); one that finds nothing
    -- withdraws the promise.
    awake AS (
      INSERT INTO webhook_worker_awake AS w (id, awake_until)
      SELECT true, CASE WHEN EXISTS (SELECT 1 FROM due) THEN now() + make_interval(secs => :promise_s) ELSE now() END
      ON CONFLICT (id) DO UPDATE
         SET awake_until = CASE WHEN EXISTS (SELECT 1 FROM due) THEN greatest(w.awake_until, excluded.awake_until)
                                ELSE excluded.awake_until END
       WHERE EXISTS (SELECT 1 FROM due) OR w.awake_until > now())
    UPDATE webhook_delivery d
       SET locked_until = now() + make_interval(secs => :lease_s), lease_token = :token
      FROM due, webhook_subscription s, outbox_event e
     WHERE d.id = due.id AND s.id = d.subscription_id AND e.id = d.event_id
 RETURNING d.id, d.org_id, d.subscription_id, d.event_id, d.attempts, d.give_up_at, d.next_attempt_at,
           s.url, s.secret, s.previous_secret, s.previous_secret_expires_at > now() AS previous_signs,
           s.include, d.event_type, e.resource, e.resource_id, e.record, e.changed, e.created_at,
           set_config('synchronous_commit', 'off', true) AS commit_unflushed
""")


def claim(conn, *, limit: int, lease_s: float, promise_s: float = 0.0) -> tuple[str, list[Claim]]:
    """Lease up to ``limit`` due deliveries for ``lease_s`` seconds, oldest due first: (the
    lease's token, the claims). Commit at once: the lease, not a transaction, keeps them while
    they are sent, and a worker that dies leaves them to be claimed again, with the same
    webhook-id and no attempt counted, when the lease runs out.

    ``promise_s``: when it claims anything, the worker claims again within that time, and the
    deliveries committed meanwhile notify no one."""
    token = str(uuid.uuid4())
    rows = conn.execute(_CLAIM, {"limit": limit, "lease_s": lease_s, "token": token,
                                 "promise_s": promise_s}).mappings().all()
    claims = []
    for row in sorted(rows, key=lambda r: (r["next_attempt_at"], r["event_id"])):  # RETURNING has no order
        keys = (row["secret"],) + ((row["previous_secret"],)
                                   if row["previous_signs"] and row["previous_secret"] else ())
        claims.append(Claim(
            delivery_id=row["id"], org_id=row["org_id"], subscription_id=row["subscription_id"],
            event_id=row["event_id"], attempts=row["attempts"], give_up_at=row["give_up_at"], url=row["url"],
            secrets=keys, include=row["include"], event_type=row["event_type"], resource=row["resource"],
            resource_id=row["resource_id"], record=row["record"], changed=tuple(row["changed"]),
            occurred_at=row["created_at"]))
    return token, claims


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed delivery: ``sent`` is False for one handed back unsent (the
    worker is stopping, or its batch ran out of time); otherwise it succeeded (a 2xx
    ``status_code``) or failed (another status, or an ``error``) and, unless it was the last
    attempt, is tried again ``delay_s`` from now."""

    claim: Claim
    sent: bool = True
    succeeded: bool = False
    status_code: int | None = None
    error: str | None = None
    delay_s: float = 0.0

    @property
    def kind(self) -> str:
        return "released" if not self.sent else "succeeded" if self.succeeded else "failed"


@dataclass(frozen=True)
class Recorded:
    """What ``record`` wrote: each recorded delivery's status now (a delivery missing here was
    claimed again by another worker after this one's lease ran out: its outcome was dropped),
    and whether the subscription was disabled by it."""

    statuses: Mapping[str, str]
    disabled: bool


# The outcomes of one subscription's deliveries of one lease, in one statement: each delivery's
# attempt (a success, a retry later or, at give_up_at, its failure), or its release unsent, and
# the lease ended; then the subscription's failing time. A success anywhere in the batch means
# the receiver answers: the subscription is not failing. Otherwise its run of failures starts
# (or goes on) now, and it is disabled when that run has lasted the whole window, or when a
# delivery that failed for good saw no success since its first attempt (the subscription has
# failed for its whole window too). The two subscription updates exclude each other, so the row
# is changed once at most. Only rows still under this worker's lease are written: a worker whose
# lease ran out while it sent records nothing over the worker that claimed them after it. As for
# the claim, the commit does not wait for the WAL flush: an outcome lost in a crash of the server
# only means the delivery is sent again, with the same webhook-id (the WAL is lost from its end,
# so a record's later outcome is never kept without its earlier one).
_RECORD = sa.text("""
    WITH outcome AS (
      SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:kinds AS text[]), CAST(:status_codes AS int[]),
                           CAST(:errors AS text[]), CAST(:delays_s AS float8[]))
                 AS o (id, kind, status_code, error, delay_s)
    ), recorded AS (
      UPDATE webhook_delivery d
         SET status = CASE o.kind WHEN 'succeeded' THEN 'succeeded'
                                  WHEN 'failed' THEN CASE WHEN now() >= d.give_up_at THEN 'failed' ELSE 'pending' END
                                  ELSE d.status END,
             attempts = d.attempts + CASE WHEN o.kind = 'released' THEN 0 ELSE 1 END,
             first_attempt_at = CASE WHEN o.kind = 'released' THEN d.first_attempt_at
                                     ELSE coalesce(d.first_attempt_at, now()) END,
             last_attempt_at = CASE WHEN o.kind = 'released' THEN d.last_attempt_at ELSE now() END,
             delivered_at = CASE WHEN o.kind = 'succeeded' THEN now() ELSE d.delivered_at END,
             last_status_code = CASE WHEN o.kind = 'released' THEN d.last_status_code ELSE o.status_code END,
             last_error = CASE WHEN o.kind = 'released' THEN d.last_error ELSE o.error END,
             -- The last attempt is made at give_up_at itself: a delivery is retried its whole window.
             next_attempt_at = CASE WHEN o.kind = 'failed'
                                    THEN least(now() + make_interval(secs => o.delay_s), d.give_up_at)
                                    ELSE d.next_attempt_at END,
             updated_at = CASE WHEN o.kind = 'released' THEN d.updated_at ELSE now() END,
             locked_until = NULL, lease_token = NULL
        FROM outcome o
       WHERE d.id = o.id AND d.lease_token = :token
   RETURNING d.id, d.status, d.first_attempt_at, o.kind
    ), answered AS (
      UPDATE webhook_subscription SET failing_since = NULL
       WHERE id = :subscription_id AND failing_since IS NOT NULL
         AND EXISTS (SELECT 1 FROM recorded WHERE kind = 'succeeded')
    ), failing AS (
      UPDATE webhook_subscription
         SET failing_since = coalesce(failing_since, now()),
             status = CASE WHEN coalesce(failing_since, now()) <= now() - make_interval(secs => :window_s)
                             OR coalesce(failing_since, now())
                                <= (SELECT max(first_attempt_at) FROM recorded WHERE status = 'failed')
                           THEN 'disabled' ELSE status END,
             updated_at = now()
       WHERE id = :subscription_id AND status = 'active'
         AND EXISTS (SELECT 1 FROM recorded WHERE kind = 'failed')
         AND NOT EXISTS (SELECT 1 FROM recorded WHERE kind = 'succeeded')
   RETURNING status = 'disabled' AS disabled_now, failing_since
    )
    SELECT r.id, r.status, f.disabled_now, f.failing_since,
           set_config('synchronous_commit', 'off', true) AS commit_unflushed
      FROM recorded r LEFT JOIN failing f ON true
""")


def record(conn, token: str, outcomes: list[Outcome], *, window_s: int) -> Recorded:
    """Record the outcomes of one subscription's claimed deliveries and end their lease; a
    subscription disabled by them gets an audit row (no user) in the same transaction."""
    [subscription_id] = {o.claim.subscription_id for o in outcomes}
    rows = conn.execute(_RECORD, {
        "token": token, "subscription_id": subscription_id, "window_s": window_s,
        "ids": [o.claim.delivery_id for o in outcomes], "kinds": [o.kind for o in outcomes],
        "status_codes": [o.status_code for o in outcomes], "errors": [o.error for o in outcomes],
        "delays_s": [o.delay_s for o in outcomes],
    }).mappings().all()
    # No failing row: paused or disabled meanwhile by someone else, who wrote the audit row if any.
    disabled = bool(rows) and bool(rows[0]["disabled_now"])
    if disabled:
        audit.record(conn, org_id=outcomes[0].claim.org_id, user_id=None, action="disable", resource="webhook",
                     resource_id=subscription_id,
                     after={"status": "disabled", "failing_since": rows[0]["failing_since"],
                            "reason": "deliveries failed for the whole retry window"})
    return Recorded(statuses={row["id"]: row["status"] for row in rows}, disabled=disabled)


# Any value: it names the prune among the advisory locks of this database.
_PRUNE_LOCK = 0x7765_6268_6F6F_6B73

# Up to :limit deliveries finished (succeeded or failed) before the cutoff, or of a deleted
# subscription (which no worker will send again), then the events no remaining delivery refers
# to. Found per subscription through webhook_delivery_list_idx: a row's created_at is never later
# than its updated_at, so the range created_at < cutoff holds every candidate and the scan reads
# only old rows. The DELETE repeats the conditions: a delivery retried since it was picked is
# pending again, and recent, and stays.
_PRUNE = sa.text("""
    WITH cutoff AS (SELECT now() - make_interval(days => :retention_days) AS at),
    picked AS (
      SELECT old.id
        FROM webhook_subscription s
       CROSS JOIN LATERAL (
             SELECT d.id FROM webhook_delivery d, cutoff
              WHERE d.subscription_id = s.id AND d.created_at < cutoff.at AND d.updated_at < cutoff.at
                AND (d.status <> 'pending' OR s.deleted_at IS NOT NULL)
              LIMIT :limit) old
       LIMIT :limit
    ), gone AS (
      DELETE FROM webhook_delivery d
       USING picked, cutoff
       WHERE d.id = picked.id AND d.updated_at < cutoff.at
         AND (d.status <> 'pending'
              OR EXISTS (SELECT 1 FROM webhook_subscription s
                          WHERE s.id = d.subscription_id AND s.deleted_at IS NOT NULL))
   RETURNING d.id, d.event_id
    ), events_gone AS (
      DELETE FROM outbox_event e
       WHERE e.id IN (SELECT event_id FROM gone)
         AND NOT EXISTS (SELECT 1 FROM webhook_delivery d
                          WHERE d.event_id = e.id AND d.id NOT IN (SELECT id FROM gone))
   RETURNING e.id
    )
    SELECT (SELECT count(*) FROM gone) AS deliveries, (SELECT count(*) FROM events_gone) AS events
""")


def prune(conn, *, retention_days: int, limit: int) -> tuple[int, int] | None:
    """Delete one batch of deliveries older than the retention and the events they leave
    unreferenced: (deliveries, events) deleted, or None while another worker prunes.

    One pruner at a time (an advisory lock held to the end of ``conn``'s transaction): two
    deleting the last deliveries of one event at once would each see the other's and keep the
    event for ever."""
    if not conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _PRUNE_LOCK}).scalar_one():
        return None
    row = conn.execute(_PRUNE, {"retention_days": retention_days, "limit": limit}).one()
    return int(row.deliveries), int(row.events)


_BACKLOG = sa.text("""
    SELECT count(*) AS depth, coalesce(extract(epoch FROM now() - min(d.created_at)), 0) AS oldest_age_s
      FROM webhook_delivery d
      JOIN webhook_subscription s ON s.id = d.subscription_id
     WHERE d.status = 'pending' AND s.status = 'active' AND s.deleted_at IS NULL
""")


def backlog(conn) -> tuple[int, float]:
    """(deliveries waiting for an active subscription, age in seconds of the oldest of them);
    a paused or disabled subscription's deliveries wait on purpose and are not a backlog."""
    row = conn.execute(_BACKLOG).one()
    return int(row.depth), float(row.oldest_age_s)
