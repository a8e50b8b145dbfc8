"""The outbox: an event row, and one delivery row per subscription that listens, written by the
same statement (a create) or transaction (everything else) as the change itself.

A rolled-back change therefore emits nothing and a committed one always emits. An organization
without an active subscription to the event type writes no row at all: the cost of events for it
is one empty probe of ``webhook_subscription_active_idx`` per write.
"""
from __future__ import annotations

from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

import config
from models import audit
from models.tables import outbox_event, webhook_delivery, webhook_subscription
from models.tenancy import same_org, scoped

# Resource name -> the events its writes emit besides <name>.created/.updated/.deleted.
RESOURCES = ("patient", "branch", "staff", "supplier", "appointment", "prescription", "transaction",
             "inventory_item", "loan", "loan_payment", "community_post", "financial_report")
SPECIAL = ("appointment.cancelled", "loan_payment.recorded", "inventory_item.low_stock")
PING = "webhook.ping"
CATALOGUE = tuple(f"{name}.{action}" for name in RESOURCES for action in ("created", "updated", "deleted")) \
    + SPECIAL + (PING,)

# Bind parameter of the retry window, named apart from any column.
_WINDOW = "outbox__retry_window_s"


def params() -> dict:
    """What the outbox part of a create statement is executed with, beside its values."""
    return {_WINDOW: config.current().webhook_retry_window_s}


def _sql(constant: str) -> sa.ColumnElement:
    return sa.literal_column(constant)


def _listening(event_type, *of_the_organization) -> sa.ColumnElement:
    """A live, active subscription to ``event_type`` (with the conditions that tie it to the
    event's organization)."""
    s = webhook_subscription
    return sa.and_(*of_the_organization, s.c.status == "active", event_type == sa.func.any(s.c.events))


def insert_from(created, resource: str, sent: tuple[str, ...]) -> list:
    """The CTEs that add ``<resource>.created`` for the rows of ``created`` (the RETURNING of a
    create's INSERT of the fields ``sent``) and a delivery for every subscription that listens to
    it. Added to the create's statement with ``add_cte``; executed with ``params()``."""
    changed = tuple(name for name in sent if name not in _SERVER_SET)
    event_type = _sql(f"'{resource}.created'")
    changed_names = _sql("ARRAY[" + ", ".join(f"'{name}'" for name in changed) + "]::text[]"
                         if changed else "'{}'::text[]")
    s = webhook_subscription
    listens = sa.exists().where(_listening(event_type, *scoped(s, created.c.org_id)))
    event = outbox_event.insert().from_select(
        ["org_id", "type", "resource", "resource_id", "record", "changed"],
        sa.select(created.c.org_id, event_type, _sql(f"'{resource}'"), created.c.id,
                  audit.image_in_sql(created.c), changed_names).where(listens),
    ).returning(outbox_event.c.id, outbox_event.c.org_id, outbox_event.c.type,
                outbox_event.c.resource_id).cte("outbox_event_row")
    return [event, _deliveries_of(event, s).cte("outbox_deliveries")]


def _deliveries_of(event, s):
    window = _sql("interval '1 second'") * sa.bindparam(_WINDOW, type_=sa.Integer)
    return webhook_delivery.insert().from_select(
        ["org_id", "subscription_id", "event_id", "event_type", "resource_id", "give_up_at"],
        sa.select(event.c.org_id, s.c.id, event.c.id, event.c.type, event.c.resource_id,
                  sa.func.now() + window)
        .select_from(event.join(s, _listening(event.c.type, same_org(event, s), s.c.deleted_at.is_(None)))),
    )


_TYPES = sa.bindparam("types", type_=ARRAY(sa.Text))
_RECORD = sa.bindparam("record", type_=JSONB)
_types = sa.func.unnest(_TYPES).table_valued("type").render_derived(name="wanted")
_event_for_types = outbox_event.insert().from_select(
    ["org_id", "type", "resource", "resource_id", "record", "changed"],
    sa.select(sa.bindparam("org_id"), _types.c.type, sa.bindparam("resource"), sa.bindparam("resource_id"),
              _RECORD, sa.bindparam("changed", type_=ARRAY(sa.Text)))
    .select_from(_types)
    .where(sa.exists().where(_listening(_types.c.type, *scoped(webhook_subscription, sa.bindparam("org_id"))))),
).returning(outbox_event.c.id, outbox_event.c.org_id, outbox_event.c.type, outbox_event.c.resource_id).cte("event")
# One statement for every event of one change: nothing is written when no one listens.
_RECORD_EVENTS = _deliveries_of(_event_for_types, webhook_subscription).add_cte(_event_for_types)


def record(conn, caller, resource, action: str, before: Mapping[str, Any] | None,
           after: Mapping[str, Any]) -> None:
    """Emit ``<resource>.<action>`` (and the resource's special events) for one changed row, in
    the caller's transaction."""
    if not resource.emits_events:
        return
    types = [f"{resource.name}.{action}"]
    if resource.also_emits is not None:
        types += resource.also_emits(action, before, after)
    conn.execute(_RECORD_EVENTS, {
        "org_id": caller.org_id, "types": types, "resource": resource.name, "resource_id": after["id"],
        "record": audit.scrub(after), "changed": changed_fields(action, before, after), **params(),
    })


def changed_fields(action: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """The fields a change wrote: every field set, for a create; none, for a delete."""
    if action == "deleted":
        return []
    if before is None:
        return sorted(name for name, value in after.items() if value is not None and name not in _SERVER_SET)
    return sorted(name for name, value in after.items() if name not in _SERVER_SET and before.get(name) != value)


# Columns every write sets by itself: never "changed" by the client.
_SERVER_SET = frozenset({"id", "org_id", "created_at", "updated_at"})
