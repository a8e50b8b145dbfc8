"""Passwords: a member changes theirs (their other sessions end, theirs goes on), an admin resets
one (every session of the member ends), both audited without the value; the minimum length is a
setting; a hash made at another BCRYPT_ROUNDS is remade at the next login; no error message
repeats a password."""
from __future__ import annotations

import json

import sqlalchemy as sa

from tests.conftest import PASSWORD, error_of
from tests.handlers.test_audit_logs import audit_rows, staff_member
from tests.handlers.test_sessions import _bearer, _login, refused_within

NEW_PASSWORD = "staple battery horse correct"


def _change(client, headers, current=PASSWORD, new=NEW_PASSWORD):
    return client.post("/auth/password", json={"current_password": current, "new_password": new}, headers=headers)


def _hash_of(engine, staff_id) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT password_hash FROM staff WHERE id = :id"), {"id": staff_id}).scalar_one()


def test_a_member_changes_their_password_and_their_other_sessions_end(client, org_a, engine):
    member = staff_member(client, org_a)
    here, elsewhere = _login(client, member["email"]), _login(client, member["email"])
    assert _change(client, _bearer(here)).status_code == 204
    refused_within(client, _bearer(elsewhere))
    assert client.post("/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}).status_code == 401
    # The session that changed it goes on, refresh included.
    assert client.get("/auth/me", headers=_bearer(here)).status_code == 200
    assert client.post("/auth/refresh", json={"refresh_token": here["refresh_token"]}).status_code == 200
    old = client.post("/auth/login", json={"email": member["email"], "password": PASSWORD})
    assert old.status_code == 401
    assert client.post("/auth/login", json={"email": member["email"], "password": NEW_PASSWORD}).status_code == 200
    (row,) = [r for r in audit_rows(engine, org_a.org_id, resource_id=member["id"]) if r["action"] == "password_change"]
    assert row["user_id"] == member["id"] and row["after"] == {"sessions_ended": 1}
    trail = json.dumps([dict(r) for r in audit_rows(engine, org_a.org_id)], default=str)
    assert PASSWORD not in trail and NEW_PASSWORD not in trail


def test_a_wrong_current_password_changes_nothing(client, org_a, engine):
    before = _hash_of(engine, org_a.admin_id)
    wrong = _change(client, org_a.headers, current="not my password at all")
    assert wrong.status_code == 422 and error_of(wrong)["field"] == "current_password", wrong.text
    assert "not my password" not in wrong.text
    assert _hash_of(engine, org_a.admin_id) == before
    assert client.get("/auth/me", headers=org_a.headers).status_code == 200


def test_the_minimum_length_is_a_setting_and_no_message_repeats_a_password(client, org_a, app_with):
    short = _change(client, org_a.headers, new="eleven char")  # 11 characters, under the default 12
    assert short.status_code == 400 and error_of(short)["field"] == "new_password", short.text
    assert "eleven char" not in short.text and "12 characters" in error_of(short)["message"]
    tiny = _change(client, org_a.headers, new="tiny!")  # under the spec's floor of 8
    assert tiny.status_code == 400 and "tiny!" not in tiny.text and error_of(tiny)["field"] == "new_password"
    long_one = "é" * 40  # 40 characters, 80 bytes
    too_long = client.post("/staff", headers=org_a.headers, json={
        "branch_id": org_a.branch_id, "name": "Long", "role": "nurse", "email": "long@example.com", "password": long_one})
    assert too_long.status_code == 400 and long_one not in too_long.text and error_of(too_long)["field"] == "password"
    for body in ({"password": "short pw"}, {"password": "x" * 100}):
        response = client.patch(f"/staff/{org_a.admin_id}", json=body, headers=org_a.headers)
        assert response.status_code == 400 and body["password"] not in response.text, response.text
    strict = app_with(password_min_length=16)
    with strict.test_client() as http:
        refused = _change(http, org_a.headers, new="fourteen chars")
        assert refused.status_code == 400 and "16 characters" in error_of(refused)["message"], refused.text
        assert _change(http, org_a.headers, new="sixteen chars ok").status_code == 204


def test_an_admin_reset_ends_every_session_of_the_member(client, org_a, engine):
    member = staff_member(client, org_a, role="doctor")
    tokens = _login(client, member["email"])
    reset = client.patch(f"/staff/{member['id']}", json={"password": NEW_PASSWORD}, headers=org_a.headers)
    assert reset.status_code == 200, reset.text
    refused_within(client, _bearer(tokens))
    assert client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    assert client.post("/auth/login", json={"email": member["email"], "password": NEW_PASSWORD}).status_code == 200
    (row,) = [r for r in audit_rows(engine, org_a.org_id, resource_id=member["id"]) if r["action"] == "password_change"]
    assert row["user_id"] == org_a.admin_id and row["after"] == {"sessions_ended": 1}
    assert client.get("/auth/me", headers=org_a.headers).status_code == 200  # the admin's session is theirs


def test_an_admin_resetting_their_own_password_keeps_their_session(client, org_a):
    other = _login(client, org_a.admin_email)
    assert client.patch(f"/staff/{org_a.admin_id}", json={"password": NEW_PASSWORD},
                        headers=org_a.headers).status_code == 200
    refused_within(client, _bearer(other))
    assert client.get("/auth/me", headers=org_a.headers).status_code == 200


def test_a_hash_of_another_cost_is_remade_at_the_next_login(client, org_a, engine, app_with):
    assert _hash_of(engine, org_a.admin_id).startswith("$2b$04$")  # the tests' BCRYPT_ROUNDS
    costlier = app_with(bcrypt_rounds=5)
    with costlier.test_client() as http:
        assert http.post("/auth/login", json={"email": org_a.admin_email, "password": PASSWORD}).status_code == 200
    assert _hash_of(engine, org_a.admin_id).startswith("$2b$05$")
    assert client.post("/auth/login", json={"email": org_a.admin_email, "password": PASSWORD}).status_code == 200
    assert client.get("/auth/me", headers=org_a.headers).status_code == 200  # a rehash ends no session
