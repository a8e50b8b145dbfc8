"""Liveness and readiness probes."""
import time

import flask
import sqlalchemy as sa

import state

from middleware.observability import render_metrics
from models import database

# How long a "migrations current" answer is trusted: a rollback on a running instance is seen
# within this, and a load balancer polling every second costs one query per interval, not per poll.
MIGRATIONS_RECHECK_SECONDS = 5.0


def get_health():
    """Liveness: the process answers; no database access."""
    return {"status": "ok"}, 200


# /ready answers within this even when the database answers nothing at all: the loop answers
# UNREACHABLE for a handler still waiting (middleware/adapter.py's deadlines, wired in app.py).
READINESS_DEADLINE_S = 1.0
UNREACHABLE = {"status": "unavailable", "database": "unreachable"}


def get_readiness():
    """Readiness: the database answers quickly and every migration is applied."""
    try:
        engine = database.current_engine()
        with engine.connect() as conn:
            conn.execute(sa.text("SET LOCAL statement_timeout = 1000"))
            read_only = conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar()
            pending = _pending_migrations(conn)
    except Exception:  # any failure means "not ready"; the reason goes to the log, not the client
        return UNREACHABLE, 503
    if pending:
        return {"status": "unavailable", "database": "ok", "pending_migrations": pending}, 503
    return _answering(read_only)


def _answering(read_only: bool):
    """The primary answers: ready unless it takes no writes. Replicas are reported, not required:
    when none can serve, the primary serves the reads."""
    if read_only:  # DATABASE_URL names a replica, or a primary being failed over: no write would succeed
        return {"status": "unavailable", "database": "read_only", **_replicas()}, 503
    return {"status": "ok", "database": "ok", **_replicas()}, 200


def _replicas() -> dict:
    """Each replica as the probe last saw it (no query here: /ready stays as fast as without)."""
    pools = database.current_pools()
    if not pools.replicas:
        return {}
    seen = []
    now = time.monotonic()
    for replica in pools.replicas:
        health = replica.health
        if not health.up:
            seen.append({"name": replica.name, "state": "down"})
            continue
        lag = health.lag_at(now)
        seen.append({"name": replica.name, "state": "ok" if pools.serves_reads(health, now) else "lagging",
                     "lag_seconds": round(lag, 3) if lag is not None else None})
    return {"replicas": seen}


def _pending_migrations(conn) -> int:
    """How many migrations the database lacks, read at most once per MIGRATIONS_RECHECK_SECONDS."""
    app_state = state.current()
    now = time.monotonic()
    checked = app_state.migrations_checked
    if checked is None or now - checked[0] >= MIGRATIONS_RECHECK_SECONDS:
        checked = app_state.migrations_checked = (now, len(database.pending_on(conn)))
    return checked[1]


def get_metrics():
    """Prometheus exposition of this instance's metrics."""
    body, content_type = render_metrics()
    # A ready-made response: connexion would otherwise refuse the version parameter of the type.
    return flask.Response(body, status=200, content_type=content_type)
