"""Webhook subscriptions, their delivery log, retries and pings (models/webhooks.py)."""
import flask

from handlers import crud_operations, if_match, listed, ok, one
from middleware.tenancy import current_caller
from models import webhooks
from models.resources import WEBHOOKS

list_webhooks, get_webhook, _create, _update, delete_webhook = crud_operations(WEBHOOKS)


def create_webhook(body: dict):
    """Subscribe a URL to events; the answer holds the signing secret, shown only here."""
    row = webhooks.subscribe(current_caller(), body)
    response = one(row, 201)
    response.headers["Location"] = f"{flask.request.script_root}/webhooks/{row['id']}"
    return response


def update_webhook(id_: str, body: dict):
    """Change, pause, resume or rotate the secret of a subscription."""
    return one(webhooks.change(current_caller(), id_, body, expect=if_match()))


def list_webhook_deliveries(id_: str, page: int = 1, page_size: int = 20, status: str | None = None):
    """The subscription's delivery log, newest first."""
    return listed(webhooks.deliveries(current_caller(), id_, page=page, page_size=page_size, status=status),
                  page, page_size)


def retry_webhook_delivery(id_: str, delivery_id: str):
    """Queue a delivery again now, with the same webhook-id."""
    return ok(webhooks.retry(current_caller(), id_, delivery_id), 202)


def ping_webhook(id_: str):
    """Queue a test event for the subscription."""
    return ok(webhooks.ping(current_caller(), id_), 202)
