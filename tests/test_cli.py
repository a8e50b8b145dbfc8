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


def test_create_org_refuses_a_taken_email_and_a_short_password(database_url, org_a):
    taken = run_cli(["create-org", "--name", "X", "--branch-name", "HQ", "--admin-email", org_a.admin_email],
                    database_url, stdin=PASSWORD + "\n")
    assert taken.returncode != 0 and "already in use" in taken.stderr
    short = run_cli(["create-org", "--name", "X", "--branch-name", "HQ", "--admin-email", "s@example.com"],
                    database_url, stdin="short\n")
    assert short.returncode != 0 and "8 to 72" in short.stderr


def test_migrate_is_idempotent_and_needs_no_jwt_secret(database_url):
    done = run_cli(["migrate"], database_url, extra_env={"JWT_SECRET": ""})
    assert done.returncode == 0, done.stderr
    assert "applied 0 migration(s)" in done.stdout


def test_serve_refuses_to_start_without_a_jwt_secret_in_production(database_url):
    done = run_cli(["serve"], database_url, extra_env={"JWT_SECRET": ""})
    assert done.returncode == 2 and "JWT_SECRET" in done.stderr
