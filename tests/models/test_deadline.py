"""The request deadline cuts the connections a request holds, from another thread, and refuses
new ones after: the waiting driver call fails at once instead of waiting on a silent server."""
import threading
import time

import pytest
import sqlalchemy as sa

from errors import ApiError
from models import database, deadline


def test_expire_cuts_a_waiting_statement_and_refuses_later_checkouts(app, database_url):
    engine = database.current_pools().writer
    limit = deadline.Deadline(30)
    outcome = {}

    def request():
        token = deadline.bind(limit)
        try:
            with engine.connect() as conn:
                started = time.monotonic()
                try:
                    conn.execute(sa.text("SELECT pg_sleep(20)"))
                except sa.exc.DBAPIError as exc:
                    outcome["cut_after"] = time.monotonic() - started
                    outcome["invalidated"] = exc.connection_invalidated
            with pytest.raises(ApiError) as refused:
                engine.connect()
            outcome["later"] = refused.value.code
        finally:
            deadline.unbind(token)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(1.0)  # the statement is on its way, the thread waits for its answer
    assert limit.expire() == 1
    thread.join(timeout=10)
    assert outcome["cut_after"] < 5 and outcome["invalidated"], outcome
    assert outcome["later"] == "SERVICE_UNAVAILABLE"
    with engine.connect() as conn:  # other requests' connections are untouched
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_a_returned_connection_is_no_longer_held(app):
    engine = database.current_pools().reader
    limit = deadline.Deadline(30)
    token = deadline.bind(limit)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        deadline.unbind(token)
    assert limit.expire() == 0
