"""Success bodies are written by orjson: they must say what connexion's own encoder said."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

from connexion.jsonifier import Jsonifier
from sqlalchemy.sql.elements import quoted_name

from handlers import JSONIFIER, encode


def _row() -> dict:
    # Keys as SQLAlchemy's mappings give them (quoted_name, a subclass of str), the values a row holds.
    values = {
        "id": uuid.UUID("94fbf2f7-e38d-893b-6d5c-d3f9d720f526"),
        "name": "Zoë Ångström \u2028 \"quoted\" \\ back",
        "created_at": dt.datetime(2026, 12, 2, 13, 4, 5, 123456, tzinfo=dt.timezone.utc),
        "updated_at": dt.datetime(2026, 12, 2, 15, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "date_of_birth": dt.date(1999, 2, 25),
        "amount": Decimal("1234.50"),
        "photo": None, "tags": ["a", "b"], "active": True, "quantity": 7,
    }
    return {quoted_name(key, None): value for key, value in values.items()}


def test_a_body_reads_back_as_connexions_encoder_wrote_it():
    body = {"success": True, "data": {"patients": [_row(), _row()], "total": 2}, "error": None}
    standard = Jsonifier(json, separators=(",", ":")).dumps(body)
    assert json.loads(encode(body)) == json.loads(standard)
    assert json.loads(JSONIFIER.dumps(body)) == json.loads(standard)


def test_instants_keep_their_offset_and_microseconds():
    written = json.loads(encode(_row()))
    assert written["created_at"] == "2026-12-02T13:04:05.123456+00:00"
    assert written["updated_at"] == "2026-12-02T15:04:05+02:00"
    assert written["amount"] == 1234.5


def test_a_success_body_is_utf8_json(client, world_a):
    response = client.get("/patients", headers=world_a.org.headers)
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content.decode("utf-8"))["success"] is True
