"""Sync positions: where a sync page starts, the opaque cursor it answers, and where it must stop.

Every list syncs the same way (``models/crud.py`` for the engine's resources, ``models/access.py``
for a patient's access history): a keyset on (timestamp, id) ascending, up to the horizon.
"""
from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa

from errors import ApiError
from models.instants import parse_instant

BEFORE_ANY_ID = "00000000-0000-0000-0000-000000000000"  # gen_random_uuid() never makes the nil uuid
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

# The start of the oldest transaction still writing here. now() in a transaction is its start, so
# every row it has yet to commit will carry a timestamp at or after that instant: a page that stops
# short of it cannot be overtaken by a commit that lands behind its cursor.
_HORIZON = sa.text("""
    SELECT coalesce(min(xact_start), now()) FROM pg_stat_activity
     WHERE datname = current_database() AND backend_type = 'client backend' AND xact_start IS NOT NULL
""").columns(sa.column("horizon", sa.DateTime(timezone=True))).scalar_subquery()


def before_horizon(stamp) -> sa.ColumnElement[bool]:
    """The condition that keeps a sync page short of the horizon, evaluated once inside the page's
    own statement (read on the primary: a replica knows nothing of its writers)."""
    return stamp < _HORIZON


def position(updated_since: str | None, cursor: str | None) -> tuple[dt.datetime, str]:
    """Where a sync page starts: after its cursor, or at ``updated_since`` before any id."""
    return decode_cursor(cursor) if cursor is not None else (parse_instant(updated_since), BEFORE_ANY_ID)


def encode_cursor(stamp: dt.datetime, row_id: str) -> str:
    """An opaque position in a sync: after the change of ``row_id`` at ``stamp``.

    Microseconds since 1970 and the id's hex digits: every string the spec's pattern admits is a
    position (the contract tests send such strings and expect no 400), and the server writes the
    microsecond precision PostgreSQL keeps."""
    return f"{(stamp - _EPOCH) // dt.timedelta(microseconds=1)}.{uuid.UUID(str(row_id)).hex}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The position a ``next_cursor`` names (a position before year 1 is year 1: nothing is older)."""
    micros, _, row_id = cursor.partition(".")
    try:
        stamp = _EPOCH + dt.timedelta(microseconds=int(micros))
        return stamp, str(uuid.UUID(hex=row_id))
    except OverflowError:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc), str(uuid.UUID(hex=row_id))
    except ValueError:
        raise ApiError("VALIDATION_ERROR", "cursor is not a next_cursor this server gave", field="cursor") from None
