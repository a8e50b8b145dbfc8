"""Test fixtures: a real PostgreSQL (embedded unless TEST_DATABASE_URL/DATABASE_URL is set), a
throw-away database migrated once per session, and the app built on it.

Tests do not share rows: each makes its own organizations (``make_org``), and every query of the
API is scoped to an organization, so no reset between tests is needed.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import config
from models import database, signing

# The session's signing key, made for this run (the servers tests spawn read the same file).
_KEY_FOLDER = Path(tempfile.mkdtemp(prefix="clinic-test-keys-"))
atexit.register(shutil.rmtree, _KEY_FOLDER, True)
TEST_SIGNING_KEY = _KEY_FOLDER / "signing.pem"
signing.generate(TEST_SIGNING_KEY)

TEST_ENV = {
    "APP_ENV": "test",
    "JWT_SIGNING_KEY_FILE": str(TEST_SIGNING_KEY),
    "BCRYPT_ROUNDS": "4",
    "VALIDATE_RESPONSES": "true",
    "RATE_LIMIT_ENABLED": "false",
    # Webhook tests send to receivers on loopback (tests/test_webhooks.py checks the refusal).
    "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
}
PASSWORD = "correct horse battery"


def sign_token(claims: dict, key=None, *, kid: str | None = None) -> str:
    """An ES256 token over ``claims``, signed with the session's key (or ``key``) and naming it."""
    import jwt
    from cryptography.hazmat.primitives import serialization

    key = key or serialization.load_pem_private_key(TEST_SIGNING_KEY.read_bytes(), password=None)
    return jwt.encode(claims, key, algorithm=signing.ALGORITHM,
                      headers={"kid": kid or signing.kid_of(key.public_key())})


def _server_url(tmp_root) -> str:
    """A URL of the 'postgres' database of the server the tests use."""
    url = config.test_database_url()
    if url:
        return url
    # The embedded server keeps its own folder so tests never touch `make run`'s data.
    return database.start_embedded(config.ROOT / ".local" / "test", database="postgres")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    return _server_url(tmp_path_factory)


@pytest.fixture(scope="session")
def settings():
    return config.load(TEST_ENV)


@pytest.fixture(scope="session")
def owner_url(server_url, settings):
    """A throw-away database migrated by its owner (the server's superuser)."""
    name = f"clinic_test_{uuid.uuid4().hex[:12]}"
    database.ensure_database(server_url, name)
    url = database.with_database(server_url, name)
    database.runtime_url(url)  # the role must exist before migrate grants it anything
    database.migrate(url, runtime_role=database.EMBEDDED_RUNTIME_ROLE, settings=settings)
    yield url
    database.drop_database(server_url, name)


@pytest.fixture(scope="session")
def database_url(owner_url):
    """The API's URL: the runtime role, with row privileges only, as in a deployment."""
    return database.runtime_url(owner_url)


@pytest.fixture(scope="session")
def app(settings, database_url):
    """The session's app; its state is bound for the work tests do outside a request (factories,
    direct engine calls). Requests bind their own app's state at the edge."""
    import state
    from app import create_app

    session_app = create_app(settings, database_url=database_url)
    state.bind(session_app.state)
    yield session_app
    session_app.state.pools.dispose()  # its threads (probe, session listener) stop before the database goes


@pytest.fixture(scope="session")
def client(app):
    with app.test_client() as test_client:
        yield test_client


@pytest.fixture(scope="session")
def engine(app):
    """The API's writer pool: the runtime role."""
    return database.current_engine()


@pytest.fixture(scope="session")
def owner_engine(owner_url):
    """The schema owner, for what a test does that the API's role may not (triggers, DDL)."""
    import sqlalchemy as sa

    engine = sa.create_engine(database.sqlalchemy_url(owner_url))
    yield engine
    engine.dispose()


@dataclass
class Org:
    """An organization made for one test, with its first branch and a logged-in admin."""

    org_id: str
    branch_id: str
    admin_id: str
    admin_email: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def session_id(self) -> str:
        """The admin's login session, which the access token names (its ``sid``)."""
        import jwt

        return jwt.decode(self.access_token, options={"verify_signature": False})["sid"]


@pytest.fixture
def make_org(client):
    """Factory: a new organization with a logged-in admin."""
    from models import accounts

    def make(name: str = "Clinic") -> Org:
        email = f"admin-{uuid.uuid4().hex[:10]}@example.com"
        ids = accounts.create_organization(name=name, branch_name="Main", admin_email=email,
                                           admin_password=PASSWORD)
        response = client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        return Org(admin_email=email, access_token=data["access_token"],
                   refresh_token=data["refresh_token"], **ids)

    return make


@pytest.fixture
def org_a(make_org) -> Org:
    return make_org("Clinic A")


@pytest.fixture
def org_b(make_org) -> Org:
    return make_org("Clinic B")


def error_of(response) -> dict:
    """The error object of an error response, after checking the envelope."""
    body = response.json()
    assert body["success"] is False and body["data"] is None, body
    return body["error"]


@pytest.fixture(scope="session")
def contract_org(client):
    """One organization for the contract run, whose admin holds every scope."""
    from models import accounts

    email = f"contract-{uuid.uuid4().hex[:10]}@example.com"
    ids = accounts.create_organization(name="Contract", branch_name="Main", admin_email=email,
                                       admin_password=PASSWORD)
    data = client.post("/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]
    return Org(admin_email=email, access_token=data["access_token"], refresh_token=data["refresh_token"], **ids)


@pytest.fixture(scope="session")
def api_schema(app):
    import schemathesis

    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="session")
def live_server(database_url):
    """The app served by uvicorn in another process, for tests that need real concurrency: with
    handler threads, so that requests really overlap in the database (the default of 0 would
    serve them one after another)."""
    process, base = spawn_server(database_url, REQUEST_THREADS="8")
    yield base
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def app_with(app, settings, database_url):
    """Factory: another app on the same database with some settings changed. It has a state of its
    own, which its requests bind; the session app is untouched."""
    from app import create_app

    made = []

    def make(**overrides):
        custom = create_app(settings.with_overrides(**overrides), database_url=database_url)
        made.append(custom)
        return custom

    yield make
    for custom in made:
        custom.state.pools.dispose()
        if custom.state.tracing is not None:
            custom.state.tracing.shutdown()


def spawn_server(database_url: str, *, production: bool = False, stderr=None, **env_overrides) -> tuple:
    """Serve the app in a child process; returns (process, base URL) once /health answers.

    By default uvicorn with the app factory; ``production=True`` runs ``clinic-api serve``
    (gunicorn with uvicorn workers), as operators do.
    """
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **TEST_ENV, "DATABASE_URL": database_url, "VALIDATE_RESPONSES": "false",
           "DB_POOL_SIZE": "30", "LOG_LEVEL": "WARNING", "PORT": str(port), **env_overrides}
    if production:
        command = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main(['serve']))"]
    else:
        command = [sys.executable, "-m", "uvicorn", "--factory", "app:create_app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, cwd=str(config.ROOT), stdout=subprocess.DEVNULL,
                               stderr=stderr if stderr is not None else subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    # Importing the app takes a few seconds alone and several times that on a loaded machine.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")
