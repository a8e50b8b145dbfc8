"""/ready's migration check follows the database: a rollback on a running instance is seen."""
from handlers import health
from models import database


def test_ready_sees_a_rollback_within_the_recheck_interval(app, client, owner_url, settings, monkeypatch):
    app.state.migrations_checked = None
    assert client.get("/ready").status_code == 200
    database.rollback(owner_url, 1, runtime_role=database.EMBEDDED_RUNTIME_ROLE)
    try:
        assert client.get("/ready").status_code == 200  # the answer is trusted for a few seconds
        monkeypatch.setattr(health, "MIGRATIONS_RECHECK_SECONDS", 0)
        response = client.get("/ready")
        assert response.status_code == 503 and response.json()["pending_migrations"] == 1
    finally:
        database.migrate(owner_url, runtime_role=database.EMBEDDED_RUNTIME_ROLE, settings=settings)
    assert client.get("/ready").status_code == 200
