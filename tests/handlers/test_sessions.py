"""Login sessions: every access token names one; a member sees and ends theirs, an admin ends a
member's; a session's end, its lifetime and its idle timeout refuse its tokens; a refresh sent
twice in a row is not taken for a theft. (tests/test_revocation.py: the same across two
``clinic-api serve`` instances.)"""
from __future__ import annotations

import time
import uuid

import jwt
import pytest
import sqlalchemy as sa

from tests.conftest import PASSWORD, error_of
from tests.handlers.test_audit_logs import audit_rows, staff_member


def _login(client, email, agent="pytest"):
    response = client.post("/auth/login", json={"email": email, "password": PASSWORD}, headers={"User-Agent": agent})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _bearer(tokens) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def _sid(tokens) -> str:
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]


def refused_within(client, headers, seconds: float = 1.0, path: str = "/auth/me", status: int = 401) -> float:
    """How long until ``path`` answers ``status``; fails after ``seconds``."""
    started = time.monotonic()
    while True:
        response = client.get(path, headers=headers)
        if response.status_code == status:
            return time.monotonic() - started
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < seconds, f"still {response.status_code} after {seconds} s"
        time.sleep(0.02)


def test_a_member_lists_their_sessions_newest_first_the_current_one_marked(client, org_a, org_b):
    phone = _login(client, org_a.admin_email, agent="ClinicApp/2.1 (iPhone)")
    listed = client.get("/auth/sessions", headers=_bearer(phone))
    assert listed.status_code == 200, listed.text
    sessions = listed.json()["data"]["sessions"]
    assert [s["id"] for s in sessions] == [_sid(phone), org_a.session_id]
    assert [s["current"] for s in sessions] == [True, False]
    assert sessions[0]["user_agent"] == "ClinicApp/2.1 (iPhone)" and sessions[0]["ip_address"]
    assert sessions[0]["created_at"] <= sessions[0]["last_used_at"] < sessions[0]["expires_at"]
    assert listed.json()["data"]["total"] == 2
    # Another organization's admin sees only their own.
    theirs = client.get("/auth/sessions", headers=org_b.headers).json()["data"]["sessions"]
    assert [s["id"] for s in theirs] == [org_b.session_id]


def test_ending_a_session_refuses_its_tokens_and_keeps_the_others(client, org_a, engine):
    laptop = _login(client, org_a.admin_email)
    assert client.get("/auth/me", headers=_bearer(laptop)).status_code == 200
    ended = client.delete(f"/auth/sessions/{_sid(laptop)}", headers=org_a.headers)
    assert ended.status_code == 204, ended.text
    refused_within(client, _bearer(laptop))
    refresh = client.post("/auth/refresh", json={"refresh_token": laptop["refresh_token"]})
    assert refresh.status_code == 401 and error_of(refresh)["code"] == "INVALID_TOKEN"
    assert client.get("/auth/me", headers=org_a.headers).status_code == 200
    assert [s["id"] for s in client.get("/auth/sessions", headers=org_a.headers).json()["data"]["sessions"]] \
        == [org_a.session_id]
    assert [r["action"] for r in audit_rows(engine, org_a.org_id, resource_id=_sid(laptop))] == ["session_end"]
    again = client.delete(f"/auth/sessions/{_sid(laptop)}", headers=org_a.headers)
    assert again.status_code == 404 and error_of(again)["code"] == "NOT_FOUND"


def test_ending_the_current_session_is_a_logout(client, org_a):
    assert client.delete(f"/auth/sessions/{org_a.session_id}", headers=org_a.headers).status_code == 204
    refused_within(client, org_a.headers)


def test_nobody_ends_a_session_that_is_not_theirs(client, org_a, org_b):
    member = staff_member(client, org_a)
    colleague = _login(client, member["email"])
    for headers, sid in ((org_a.headers, _sid(colleague)), (org_a.headers, org_b.session_id),
                         (org_a.headers, str(uuid.uuid4()))):
        response = client.delete(f"/auth/sessions/{sid}", headers=headers)
        assert response.status_code == 404 and error_of(response)["code"] == "NOT_FOUND", response.text
    assert client.get("/auth/me", headers=_bearer(colleague)).status_code == 200
    assert client.delete("/auth/sessions/not-a-uuid", headers=org_a.headers).status_code == 400


def test_an_admin_ends_every_session_of_a_member(client, org_a, org_b, engine):
    member = staff_member(client, org_a, role="doctor")
    first, second = _login(client, member["email"]), _login(client, member["email"])
    # Not someone else's: a doctor holds no staff:write, another organization's admin finds no such member.
    assert client.delete(f"/staff/{member['id']}/sessions", headers=_bearer(first)).status_code == 403
    assert client.delete(f"/staff/{member['id']}/sessions", headers=org_b.headers).status_code == 404
    assert client.delete(f"/staff/{member['id']}/sessions", headers=org_a.headers).status_code == 204
    for tokens in (first, second):
        refused_within(client, _bearer(tokens))
        assert client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    (row,) = [r for r in audit_rows(engine, org_a.org_id, resource_id=member["id"]) if r["action"] == "sessions_end"]
    assert row["after"] == {"sessions_ended": 2}
    assert client.get("/auth/me", headers=_bearer(_login(client, member["email"]))).status_code == 200  # may log in again


def test_logout_refuses_the_access_token_too(client, org_a):
    assert client.get("/auth/me", headers=org_a.headers).status_code == 200
    assert client.post("/auth/logout", json={"refresh_token": org_a.refresh_token}).status_code == 204
    refused_within(client, org_a.headers)


def test_a_deleted_member_is_refused_at_once(client, org_a):
    member = staff_member(client, org_a)
    tokens = _login(client, member["email"])
    assert client.get("/patients", headers=_bearer(tokens)).status_code == 200
    assert client.delete(f"/staff/{member['id']}", headers=org_a.headers).status_code == 204
    refused_within(client, _bearer(tokens), path="/patients")


def test_a_role_taken_away_takes_its_scopes_from_the_token(client, org_a):
    member = staff_member(client, org_a, role="nurse")
    assert client.post(f"/staff/{member['id']}/roles", json={"role": "accountant"}, headers=org_a.headers).status_code == 200
    tokens = _login(client, member["email"])
    assert client.get("/transactions", headers=_bearer(tokens)).status_code == 200
    assert client.delete(f"/staff/{member['id']}/roles/accountant", headers=org_a.headers).status_code == 204
    refused_within(client, _bearer(tokens), path="/transactions", status=403)
    assert client.get("/patients", headers=_bearer(tokens)).status_code == 200  # the nurse's scopes stay


# Each change to a member's access, made by the admin (or the member) on this worker: (what it
# does, the path it takes away, the status that path answers afterwards).
_ACCESS_CHANGES = {
    "a role revoked": (lambda client, org, member, tokens: client.delete(
        f"/staff/{member['id']}/roles/accountant", headers=org.headers), "/transactions", 403),
    "the staff record's role changed": (lambda client, org, member, tokens: client.patch(
        f"/staff/{member['id']}", json={"role": "nurse"}, headers=org.headers), "/transactions", 403),
    "the password reset by an admin": (lambda client, org, member, tokens: client.patch(
        f"/staff/{member['id']}", json={"password": "another-password-42"}, headers=org.headers), "/auth/me", 401),
    "the member deleted": (lambda client, org, member, tokens: client.delete(
        f"/staff/{member['id']}", headers=org.headers), "/auth/me", 401),
    "the sessions ended by an admin": (lambda client, org, member, tokens: client.delete(
        f"/staff/{member['id']}/sessions", headers=org.headers), "/auth/me", 401),
    "a logout": (lambda client, org, member, tokens: client.post(
        "/auth/logout", json={"refresh_token": tokens["refresh_token"]}), "/auth/me", 401),
}


@pytest.mark.parametrize("change", list(_ACCESS_CHANGES))
def test_a_change_of_access_holds_at_once_on_the_worker_that_made_it(app, client, org_a, monkeypatch, change):
    """The worker that commits a change to someone's access must not wait for its own
    notification: with the notifications kept from this worker and its cached standings
    trusted, the next request is already refused."""
    import threading

    from models import sessions

    act, path, status = _ACCESS_CHANGES[change]
    cache = app.state.sessions
    heard = cache.apply
    monkeypatch.setattr(cache, "apply", lambda payload: None if threading.current_thread() is cache._thread
                        else heard(payload))
    member = staff_member(client, org_a, role="accountant")
    tokens = _login(client, member["email"])
    assert client.get(path, headers=_bearer(tokens)).status_code == 200
    monkeypatch.setattr(sessions.SessionCache, "_trusted", lambda self, entry, now: True)
    assert act(client, org_a, member, tokens).status_code in (200, 204)
    assert client.get(path, headers=_bearer(tokens)).status_code == status


def test_after_commit_runs_once_committed_and_never_after_a_rollback(app):
    """What ``sessions.changed`` rests on: the callback waits for the COMMIT, a ROLLBACK drops it,
    and nothing is left on the connection for its next use."""
    from models import database

    writer = app.state.pools.writer
    ran = []
    with pytest.raises(RuntimeError), writer.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
        database.after_commit(conn, lambda: ran.append("rolled back"))
        raise RuntimeError("the change is refused")
    with writer.begin() as conn:
        database.after_commit(conn, lambda: ran.append("committed"))
        conn.execute(sa.text("SELECT 1"))
        assert ran == []
    assert ran == ["committed"]
    for _ in range(3):  # the pool hands the same connections out again
        with writer.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
    assert ran == ["committed"]


def test_a_refresh_sent_twice_gets_two_valid_pairs(client, org_a):
    first = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token})
    twice = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token})
    assert first.status_code == 200 and twice.status_code == 200, twice.text
    pairs = [first.json()["data"], twice.json()["data"]]
    assert pairs[0]["refresh_token"] != pairs[1]["refresh_token"]
    for pair in pairs:
        assert _sid(pair) == org_a.session_id  # one session, not a new login
        assert client.get("/auth/me", headers=_bearer(pair)).status_code == 200
        assert client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 200


def test_a_rotated_token_coming_back_after_the_grace_window_ends_the_session(client, org_a, engine):
    rotated = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token}).json()["data"]
    with engine.begin() as conn:  # as if REFRESH_GRACE_SECONDS (10) had passed
        conn.execute(sa.text("UPDATE session SET revoked_at = revoked_at - interval '11 seconds' "
                             "WHERE family_id = :sid AND replaced_by IS NOT NULL"), {"sid": org_a.session_id})
    reuse = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token})
    assert reuse.status_code == 401 and error_of(reuse)["code"] == "INVALID_TOKEN"
    assert client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]}).status_code == 401
    refused_within(client, _bearer(rotated))
    assert [r["action"] for r in audit_rows(engine, org_a.org_id, resource_id=org_a.session_id)] == ["token_reuse"]


def test_a_session_ends_at_its_absolute_lifetime_on_access_and_on_refresh(app_with, org_a):
    lasting = app_with(session_absolute_lifetime_s=2)
    with lasting.test_client() as http:
        tokens = _login(http, org_a.admin_email)
        assert http.get("/auth/me", headers=_bearer(tokens)).status_code == 200
        time.sleep(2.2)
        late = http.get("/auth/me", headers=_bearer(tokens))
        assert late.status_code == 401 and "lifetime" in error_of(late)["message"], late.text
        assert http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
        assert http.get("/auth/sessions", headers=org_a.headers).status_code == 401  # also past it


def _clocks() -> tuple[float, float]:
    # Both: the worker's cache measures idleness on the monotonic clock, PostgreSQL on the wall clock.
    return time.monotonic(), time.time()


def test_a_session_ends_after_its_idle_timeout_and_use_keeps_it(app_with, org_a):
    idle = app_with(session_idle_timeout_s=2)
    with idle.test_client() as http:
        for _attempt in range(3):
            used, unused = _login(http, org_a.admin_email), _login(http, org_a.admin_email)
            previous, answers, longest_gap = _clocks(), [], 0.0
            for _ in range(3):  # 3 s of use every second: never 2 s idle
                time.sleep(1.0)
                answers.append(http.get("/auth/me", headers=_bearer(used)).status_code)
                now = _clocks()
                longest_gap = max(longest_gap, *(b - a for a, b in zip(previous, now)))
                previous = now
            if longest_gap < 1.8:
                break
            # The machine stalled (or its clock stepped) between two uses: the session may rightly
            # have gone idle, so this attempt proves nothing either way.
        else:
            pytest.fail(f"every attempt saw a gap of {longest_gap:.1f} s between two uses")
        assert answers == [200, 200, 200]
        refused = http.get("/auth/me", headers=_bearer(unused))
        assert refused.status_code == 401 and "idle" in error_of(refused)["message"], refused.text
        assert http.post("/auth/refresh", json={"refresh_token": unused["refresh_token"]}).status_code == 401
        assert http.post("/auth/refresh", json={"refresh_token": used["refresh_token"]}).status_code == 200
