"""Revocation on every worker of every instance: two ``clinic-api serve`` processes with two
workers each share one database; a session ended on one (logout, an admin's end, the member's
deletion, a password reset) is refused on all within a second, as is a scope whose role was taken
away. A third
instance whose listener cannot connect (DATABASE_LISTEN_URL names a closed port) still refuses
within a second, by reading sessions again."""
from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest

from tests.conftest import PASSWORD, spawn_server

WITHIN_S = 1.0
SERVE = {"WEB_CONCURRENCY": "2", "WEBHOOK_WORKER": "false", "RATE_LIMIT_ENABLED": "false"}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture(scope="module")
def instances(database_url):
    servers = [spawn_server(database_url, production=True, **SERVE) for _ in range(2)]
    yield [base for _, base in servers]
    for process, _ in servers:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def deaf_instance(database_url):
    process, base = spawn_server(database_url, production=True, **SERVE,
                                 DATABASE_LISTEN_URL=f"postgresql://127.0.0.1:{_closed_port()}/nothing")
    yield base
    process.terminate()
    process.wait(timeout=30)


def _login(base, email) -> dict:
    response = httpx.post(f"{base}/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    tokens = response.json()["data"]
    return {"Authorization": f"Bearer {tokens['access_token']}", "refresh": tokens["refresh_token"]}


def _bearer(tokens) -> dict:
    return {"Authorization": tokens["Authorization"]}


def _answers_after(bases, headers, act, path="/auth/me") -> list[tuple[float, int]]:
    """Every worker has served the token; then ``act()``; then (seconds after it, status) of
    requests to every instance, each on a new connection (so each worker gets its share)."""
    for base in bases:
        for _ in range(12):
            assert httpx.get(f"{base}{path}", headers=headers).status_code == 200
    act()
    done = time.monotonic()
    answers = []
    while time.monotonic() - done < WITHIN_S + 1.2:
        for base in bases:
            sent = time.monotonic() - done
            answers.append((sent, httpx.get(f"{base}{path}", headers=headers).status_code))
    return answers


def _refused_in_time(answers, status=401) -> None:
    late = [code for sent, code in answers if sent > WITHIN_S]
    assert len(late) >= 4 and set(late) == {status}, answers
    still_served = [sent for sent, code in answers if code == 200]
    print(f"last 200 sent {max(still_served, default=0):.3f} s after the change; {len(answers)} answers")


def _member(base, admin, role="nurse") -> dict:
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    created = httpx.post(f"{base}/staff", headers=admin, json={
        "branch_id": httpx.get(f"{base}/auth/me", headers=admin).json()["data"]["branch_id"],
        "name": role, "role": role, "email": email, "password": PASSWORD})
    assert created.status_code == 201, created.text
    return {**created.json()["data"], "email": email}


def test_a_logout_on_one_instance_is_refused_on_every_worker_of_both(instances, make_org):
    org = make_org()
    tokens = _login(instances[0], org.admin_email)
    answers = _answers_after(instances, _bearer(tokens), lambda: httpx.post(
        f"{instances[1]}/auth/logout", json={"refresh_token": tokens["refresh"]}).raise_for_status())
    _refused_in_time(answers)


def test_an_admin_ending_a_members_sessions_and_deleting_them_is_refused_everywhere(instances, make_org):
    org = make_org()
    admin = _bearer(_login(instances[0], org.admin_email))
    member = _member(instances[0], admin)
    ended = _bearer(_login(instances[1], member["email"]))
    _refused_in_time(_answers_after(instances, ended, lambda: httpx.delete(
        f"{instances[0]}/staff/{member['id']}/sessions", headers=admin).raise_for_status(), path="/patients"))
    deleted = _bearer(_login(instances[1], member["email"]))
    _refused_in_time(_answers_after(instances, deleted, lambda: httpx.delete(
        f"{instances[1]}/staff/{member['id']}", headers=admin).raise_for_status(), path="/patients"))


def test_a_password_reset_is_refused_everywhere_within_a_second(instances, make_org):
    org = make_org()
    admin = _bearer(_login(instances[0], org.admin_email))
    member = _member(instances[0], admin)
    tokens = _bearer(_login(instances[1], member["email"]))
    _refused_in_time(_answers_after(instances, tokens, lambda: httpx.patch(
        f"{instances[0]}/staff/{member['id']}", json={"password": "a new password for you"},
        headers=admin).raise_for_status()))


def test_a_role_taken_away_is_403_everywhere_within_a_second(instances, make_org):
    org = make_org()
    admin = _bearer(_login(instances[0], org.admin_email))
    member = _member(instances[0], admin)
    assert httpx.post(f"{instances[0]}/staff/{member['id']}/roles", json={"role": "accountant"},
                      headers=admin).status_code == 200
    tokens = _bearer(_login(instances[1], member["email"]))
    answers = _answers_after(instances, tokens, lambda: httpx.delete(
        f"{instances[1]}/staff/{member['id']}/roles/accountant", headers=admin).raise_for_status(),
        path="/transactions")
    _refused_in_time(answers, status=403)


def test_without_its_listener_an_instance_still_refuses_within_a_second(deaf_instance, instances, make_org):
    org = make_org()
    tokens = _login(deaf_instance, org.admin_email)
    answers = _answers_after([deaf_instance], _bearer(tokens), lambda: httpx.post(
        f"{instances[0]}/auth/logout", json={"refresh_token": tokens["refresh"]}).raise_for_status())
    _refused_in_time(answers)
