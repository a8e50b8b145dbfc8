"""Per-request work of the API, in process, for A/B comparisons that a busy machine cannot blur.

Wall and CPU time move by 10-40% between runs here; instruction counts do not. Run a scenario
twice under cachegrind with two request counts and divide the difference::

    for n in 100 400; do valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python bench/inprocess.py get $n 2>&1 | grep 'I *refs'; done

(400 - 100 requests: the start-up cancels out.) Scenarios: get, create, list. The database is
``DATABASE_URL`` (a throw-away database is made on its server and dropped at the end).
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import state  # noqa: E402
from models import database  # noqa: E402

PASSWORD = "bench-password-123"


def main(scenario: str, count: int) -> None:
    server = os.environ.get("DATABASE_URL") or database.start_embedded(config.ROOT / ".local" / "bench", "postgres")
    name = f"clinic_inprocess_{uuid.uuid4().hex[:8]}"
    database.ensure_database(server, name)
    url = database.with_database(server, name)
    try:
        database.migrate(url)
        run(url, scenario, count)
    finally:
        database.drop_database(server, name)


def seeded_app(server: str, name: str, *, patients: int = 20_000):
    """Database ``name`` on ``server``, dropped if it was there, migrated and seeded as ``make
    bench`` seeds it, and the app on it in-process, logged in as organization 1's admin:
    ``(url, seeded, app, client, headers)``. The caller drops the database at the end."""
    from app import create_app
    from bench import seed as seeding

    database.drop_database(server, name)
    database.ensure_database(server, name)
    url = database.with_database(server, name)
    database.migrate(url)
    seeded = seeding.seed(url, patients=patients, log=lambda *_: None)
    settings = config.load({"APP_ENV": "test", "RATE_LIMIT_ENABLED": "false",
                            "LOG_LEVEL": "WARNING", "BCRYPT_ROUNDS": "4"})
    app = create_app(settings, database_url=url)
    client = app.test_client()
    login = client.post("/auth/login", json={"email": "admin@org1.bench.example", "password": "bench-password"})
    headers = {"Authorization": f"Bearer {login.json()['data']['access_token']}"}
    return url, seeded, app, client, headers


def run(url: str, scenario: str, count: int) -> None:
    from app import create_app
    from models import accounts

    settings = config.load({"APP_ENV": "test", "BCRYPT_ROUNDS": "4",
                            "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING"})
    app = create_app(settings, database_url=url)
    state.bind(app.state)  # the organization below is made outside a request
    ids = accounts.create_organization(name="Bench", branch_name="Main", admin_email="bench@example.com",
                                       admin_password=PASSWORD)
    with app.test_client() as client:
        token = client.post("/auth/login", json={"email": "bench@example.com", "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {token['data']['access_token']}"}
        body = {"branch_id": ids["branch_id"], "name": "Ada Lovelace", "email": "ada@example.com"}
        patient = client.post("/patients", json=body, headers=headers).json()["data"]["id"]
        requests = {
            "get": lambda: client.get(f"/patients/{patient}", headers=headers),
            "create": lambda: client.post("/patients", json=body, headers=headers),
            "list": lambda: client.get("/patients?page=1&pageSize=20", headers=headers),
        }[scenario]
        for _ in range(count):
            answer = requests()
            assert answer.status_code < 300, answer.text


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
