"""The operator's console script, run as a real process against the test database."""
import json
import os
import subprocess
import sys
import uuid

from tests.conftest import PASSWORD

CLI = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())"]


def run_cli(args, database_url, *, stdin="", extra_env=None):
    env = {**os.environ, "DATABASE_URL": database_url, "APP_ENV": "production", "BCRYPT_ROUNDS": "4"}
    env.pop("ADMIN_PASSWORD", None)
    env.update(extra_env or {})
    return subprocess.run(CLI + args, input=stdin, capture_output=True, text=True, env=env, timeout=60)


def test_create_org_reads_the_password_from_stdin_and_prints_ids(client, database_url):
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    done = run_cli(["create-org", "--name", "North", "--branch-name", "HQ", "--admin-email", email],
                   database_url, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(ids) == {"org_id", "branch_id", "admin_id"}
    login = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200
    assert login.json()["data"]["user"]["org_id"] == ids["org_id"]


def test_create_org_takes_admin_password_from_the_environment(client, database_url):
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    done = run_cli(["create-org", "--name", "South", "--branch-name", "HQ", "--admin-email", email],
                   database_url, extra_env={"ADMIN_PASSWORD": "another password"})
    assert done.returncode == 0, done.stderr
    assert client.post("/auth/login", json={"email": email, "password": "another password"}).status_code == 200


def test_create_org_takes_an_address_of_another_organization_and_refuses_a_short_password(database_url, org_a):
    # One person may run two clinics with one address (each organization has its own logins).
    shared = run_cli(["create-org", "--name", "X", "--branch-name", "HQ", "--admin-email", org_a.admin_email],
                     database_url, stdin=PASSWORD + "\n")
    assert shared.returncode == 0, shared.stderr
    short = run_cli(["create-org", "--name", "X", "--branch-name", "HQ", "--admin-email", "s@example.com"],
                    database_url, stdin="short\n")
    assert short.returncode != 0 and "at least 12 characters" in short.stderr


def test_migrate_is_idempotent_and_needs_no_signing_key(database_url):
    done = run_cli(["migrate"], database_url, extra_env={"JWT_SIGNING_KEY_FILE": ""})
    assert done.returncode == 0, done.stderr
    assert "applied 0 migration(s)" in done.stdout


def test_serve_refuses_to_start_without_a_signing_key_in_production(database_url, tmp_path):
    done = run_cli(["serve"], database_url, extra_env={"JWT_SIGNING_KEY_FILE": ""})
    assert done.returncode == 2 and "JWT_SIGNING_KEY_FILE" in done.stderr
    not_a_key = tmp_path / "secret.txt"
    not_a_key.write_text("an HS256 secret of old, not a key")
    done = run_cli(["serve"], database_url, extra_env={"JWT_SIGNING_KEY_FILE": str(not_a_key)})
    assert done.returncode == 2 and "JWT_SIGNING_KEY_FILE" in done.stderr and "PEM" in done.stderr


def test_generate_key_writes_a_private_key_once(tmp_path):
    path = tmp_path / "keys" / "signing.pem"
    done = run_cli(["generate-key", str(path)], "postgresql://unused")
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert written["path"] == str(path) and len(written["kid"]) == 43  # SHA-256, base64url
    first = path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in first
    again = run_cli(["generate-key", str(path)], "postgresql://unused")
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert path.read_bytes() == first


def test_serve_in_development_makes_one_key_in_the_data_folder_for_every_worker(database_url, tmp_path):
    """What `make run` relies on: no key configured, one made in DATA_DIR before the workers fork."""
    import httpx
    from cryptography.hazmat.primitives import serialization

    from models import signing
    from tests.conftest import spawn_server

    process, base = spawn_server(database_url, production=True, APP_ENV="development", JWT_SIGNING_KEY_FILE="",
                                 DATA_DIR=str(tmp_path), WEB_CONCURRENCY="2", WEBHOOK_WORKER="false")
    try:
        # New connections reach both workers; each serves the one key of the data folder.
        served = {tuple(k["kid"] for k in httpx.get(f"{base}/.well-known/jwks.json").json()["keys"])
                  for _ in range(8)}
    finally:
        process.terminate()
        process.wait(timeout=30)
    key = serialization.load_pem_private_key((tmp_path / "jwt_signing_key.pem").read_bytes(), password=None)
    assert served == {(signing.kid_of(key.public_key()),)}
    assert (tmp_path / "jwt_signing_key.pem").stat().st_mode & 0o777 == 0o600


def test_a_served_worker_freezes_what_it_built_at_startup(database_url):
    """Full collections in a served worker skip the app's startup objects (see the decision record)."""
    probe = ("import gc, cli, config; cli.served_app(config.load(serving=True), %r); "
             "print(gc.get_freeze_count(), gc.get_count()[0])" % database_url)
    env = {**os.environ, "DATABASE_URL": database_url, "APP_ENV": "development", "WEBHOOK_WORKER": "false"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    frozen, young = map(int, done.stdout.split())
    assert frozen > 50_000 and young < 100
