"""Liveness and readiness probes."""
import sqlalchemy as sa

from models import database


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
        pending = database.pending_migrations(engine.url.render_as_string(hide_password=False))
    except Exception:  # any failure means "not ready"; the reason goes to the log, not the client
        return {"status": "unavailable", "database": "unreachable"}, 503
    if pending:
        return {"status": "unavailable", "database": "ok", "pending_migrations": len(pending)}, 503
    return {"status": "ok", "database": "ok"}, 200
