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
    """A delivery locked by this worker's transaction until it records the attempt."""

    delivery_id: str
    org_id: str
    subscription_id: str
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

# The oldest due delivery whose record has no earlier event still pending for the subscription
# (in order per record), of an active subscription. SKIP LOCKED: workers never wait on each other;
# an earlier event locked by another worker is still pending, so its successors wait for it.
# The claiming transaction stays open while the worker POSTs (up to 10 s): set_config lifts the
# runtime role's idle-in-transaction timeout for this transaction only, and only when a row is
# claimed, without a round trip of its own (and without a session SET, which PgBouncer would leak).
_CLAIM = sa.text("""
    SELECT set_config('idle_in_transaction_session_timeout', '60s', true) AS lifted,
           d.id, d.org_id, d.subscription_id, d.attempts, d.give_up_at,
           s.url, s.secret, s.previous_secret, s.previous_secret_expires_at > now() AS previous_signs,
           s.include, d.event_type, e.resource, e.resource_id, e.record, e.changed, e.created_at
      FROM webhook_delivery d
      JOIN webhook_subscription s ON s.id = d.subscription_id AND s.org_id = d.org_id
      JOIN outbox_event e ON e.id = d.event_id
     WHERE d.status = 'pending'
       AND d.next_attempt_at <= now()
       AND s.status = 'active' AND s.deleted_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM webhook_delivery earlier
                        WHERE earlier.subscription_id = d.subscription_id
                          AND earlier.resource_id = d.resource_id
                          AND earlier.status = 'pending'
                          AND earlier.event_id < d.event_id)
     ORDER BY d.next_attempt_at, d.event_id
     LIMIT 1
       FOR UPDATE OF d SKIP LOCKED
""")


def claim(conn) -> Claim | None:
    """Lock the next delivery due, or None; the lock lasts until ``conn``'s transaction ends, so a
    worker that dies mid-delivery leaves it pending for another (same webhook-id)."""
    row = conn.execute(_CLAIM).mappings().first()
    if row is None:
        return None
    keys = (row["secret"],) + ((row["previous_secret"],) if row["previous_signs"] and row["previous_secret"] else ())
    return Claim(delivery_id=row["id"], org_id=row["org_id"], subscription_id=row["subscription_id"],
                 attempts=row["attempts"], give_up_at=row["give_up_at"], url=row["url"], secrets=keys,
                 include=row["include"], event_type=row["event_type"], resource=row["resource"],
                 resource_id=row["resource_id"], record=row["record"], changed=tuple(row["changed"]),
                 occurred_at=row["created_at"])


_SUCCEEDED = sa.text("""
    WITH delivered AS (
      UPDATE webhook_delivery
         SET status = 'succeeded', attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, now()),
             last_attempt_at = now(), delivered_at = now(),
             last_status_code = :status_code, last_error = NULL, updated_at = now()
       WHERE id = :delivery_id)
    UPDATE webhook_subscription SET failing_since = NULL
     WHERE id = :subscription_id AND failing_since IS NOT NULL
""")


def record_success(conn, claim: Claim, status_code: int) -> None:
    conn.execute(_SUCCEEDED, {"delivery_id": claim.delivery_id, "subscription_id": claim.subscription_id,
                              "status_code": status_code})


# The last attempt is made at give_up_at itself, so that a delivery is retried for its whole window.
_FAILED = sa.text("""
    UPDATE webhook_delivery
       SET attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, now()), last_attempt_at = now(),
           last_status_code = :status_code, last_error = :error, updated_at = now(),
           status = CASE WHEN now() >= give_up_at THEN 'failed' ELSE 'pending' END,
           next_attempt_at = least(now() + make_interval(secs => :delay_s), give_up_at)
     WHERE id = :delivery_id
 RETURNING status, first_attempt_at
""")
_FAILING = sa.text("""
    UPDATE webhook_subscription
       SET failing_since = coalesce(failing_since, now()),
           status = CASE WHEN coalesce(failing_since, now()) <= now() - make_interval(secs => :window_s)
                           OR (:gave_up AND coalesce(failing_since, now()) <= :first_attempt_at)
                         THEN 'disabled' ELSE status END,
           updated_at = now()
     WHERE id = :subscription_id AND status = 'active'
 RETURNING status = 'disabled' AS disabled_now, failing_since
""")


def record_failure(conn, claim: Claim, *, status_code: int | None, error: str | None, delay_s: float,
                   window_s: int) -> tuple[str, bool]:
    """Schedule the next attempt (or mark the delivery failed at its give-up time) and count the
    subscription's failing time: failing for ``window_s`` disables it, with an audit row.
    Returns (the delivery's status, whether the subscription was disabled now)."""
    delivery = conn.execute(_FAILED, {"delivery_id": claim.delivery_id, "status_code": status_code,
                                      "error": error, "delay_s": delay_s}).one()
    # A delivery that failed for good, with no success anywhere since its first attempt: the
    # subscription has failed for a whole window too.
    subscription = conn.execute(_FAILING, {"subscription_id": claim.subscription_id, "window_s": window_s,
                                           "gave_up": delivery.status == "failed",
                                           "first_attempt_at": delivery.first_attempt_at}).mappings().first()
    # None: paused or disabled meanwhile by someone else, who wrote the audit row if any.
    disabled = subscription is not None and subscription["disabled_now"]
    if disabled:
        audit.record(conn, org_id=claim.org_id, user_id=None, action="disable", resource="webhook",
                     resource_id=claim.subscription_id,
                     after={"status": "disabled", "failing_since": subscription["failing_since"],
                            "reason": "deliveries failed for the whole retry window"})
    return delivery.status, disabled


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
