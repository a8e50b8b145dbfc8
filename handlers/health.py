"""Liveness and readiness probes."""
import flask
import sqlalchemy as sa

from middleware.observability import render_metrics
from models import database

_migrations_current = False


def get_health():
    """Liveness: the process answers; no database access."""
    return {"status": "ok"}, 200


def get_readiness():
    """Readiness: the database answers quickly and every migration is applied."""
    try:
        engine = database.current_engine()
        with engine.connect() as conn:
            conn.execute(sa.text("SET LOCAL statement_timeout = 1000"))
            conn.execute(sa.text("SELECT 1"))
        pending = [] if _migrations_current else database.pending_migrations(
            engine.url.render_as_string(hide_password=False))
    except Exception:  # any failure means "not ready"; the reason goes to the log, not the client
        return {"status": "unavailable", "database": "unreachable"}, 503
    if pending:
        return {"status": "unavailable", "database": "ok", "pending_migrations": len(pending)}, 503
    _remember_migrations_current()
    return {"status": "ok", "database": "ok"}, 200


def _remember_migrations_current() -> None:
    # Migrations only move forward while an instance runs; once current, stop asking yoyo.
    global _migrations_current
    _migrations_current = True


def get_metrics():
    """Prometheus exposition of this instance's metrics."""
    body, content_type = render_metrics()
    # A ready-made response: connexion would otherwise refuse the version parameter of the type.
    return flask.Response(body, status=200, content_type=content_type)
