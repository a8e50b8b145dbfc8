"""Instants as the contract writes them (RFC 3339 with an offset) and as PostgreSQL stores them."""
from __future__ import annotations

import datetime
import re

from errors import ApiError


def parse_instant(value: str) -> datetime.datetime:
    """An RFC 3339 date-time as an aware datetime, in UTC where it fits.

    PostgreSQL refuses offsets beyond +-15:59 that RFC 3339 allows, so instants are sent to it in
    UTC; fractions beyond microseconds are cut (PostgreSQL keeps microseconds).
    """
    text = value.replace("t", "T").replace("z", "Z")
    head, dot, rest = text.partition(".")
    if dot:
        digits = re.match(r"\d+", rest).group(0)
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    instant = datetime.datetime.fromisoformat(text)
    try:
        return instant.astimezone(datetime.timezone.utc)
    except OverflowError as exc:
        # Year 1 with a positive offset is year 0 in UTC, year 9999 with a negative one year
        # 10000: PostgreSQL would store either, but no client (Python's datetime included) could
        # read it back.
        raise ApiError("VALIDATION_ERROR",
                       f"{value} is outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z") from exc
