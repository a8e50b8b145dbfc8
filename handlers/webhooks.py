"""Webhook subscriptions, their delivery log, retries and pings (models/webhooks.py)."""
from handlers import created_answer, delete_in, idempotent_request, if_match, list_of, ok, one, one_of
from middleware.tenancy import current_caller
from models import webhooks


def list_webhooks(**params):
    """One page of the organization's subscriptions, newest first (never their secrets)."""
    return list_of("webhook", **params)


def get_webhook(id_: str):
    """One subscription (never its secret)."""
    return one_of("webhook", id_)


def create_webhook(body: dict):
    """Subscribe a URL to events; the answer holds the signing secret, shown only here."""
    idempotency = idempotent_request(body)
    return created_answer(webhooks.subscribe(current_caller(), body, idempotency=idempotency), idempotency)


def update_webhook(id_: str, body: dict):
    """Change, pause, resume or rotate the secret of a subscription."""
    return one(webhooks.change(current_caller(), id_, body, expect=if_match()))


def delete_webhook(id_: str):
    """Unsubscribe: soft-delete the subscription; nothing more is delivered to it."""
    return delete_in("webhook", id_)


def list_webhook_deliveries(id_: str, **params):
    """The subscription's delivery log, newest first (or what changed, to sync)."""
    return list_of("webhook_delivery", parent_id=id_, **params)


def retry_webhook_delivery(id_: str, delivery_id: str):
    """Queue a delivery again now, with the same webhook-id."""
    return ok(webhooks.retry(current_caller(), id_, delivery_id), 202)


def ping_webhook(id_: str):
    """Queue a test event for the subscription."""
    return ok(webhooks.ping(current_caller(), id_), 202)
