"""TOTP two-factor login (RFC 6238): enrolment, the two-step login, recovery codes, the admin's
reset and MFA_REQUIRED_ROLES, against the app with real PostgreSQL."""
import time
import urllib.parse
import uuid

import pyotp
import pytest
import sqlalchemy as sa

from tests.conftest import PASSWORD, error_of
from tests.factories import post


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _login(client, email, password=PASSWORD):
    return client.post("/auth/login", json={"email": email, "password": password})


def _code(secret: str, steps_ahead: int = 0) -> str:
    """The code of the current 30-second step, or of a later one (each code is accepted once)."""
    return pyotp.TOTP(secret).at(time.time() + 30 * steps_ahead)


# secret -> the code that confirmed its enrolment (a replay must send that code, not the code of
# whatever step the clock has reached since).
_CONFIRMED_WITH: dict[str, str] = {}


def _enrolled(client, headers) -> tuple[str, list[str]]:
    secret = client.post("/auth/mfa/totp", headers=headers).json()["data"]["secret"]
    code = _code(secret)
    confirmed = client.post("/auth/mfa/totp/confirm", json={"code": code}, headers=headers)
    assert confirmed.status_code == 200, confirmed.text
    _CONFIRMED_WITH[secret] = code
    return secret, confirmed.json()["data"]["recovery_codes"]


def _member(client, org, role="doctor"):
    email = f"mfa-{uuid.uuid4().hex[:8]}@example.com"
    member = post(client, org, "/staff", {"branch_id": org.branch_id, "name": "Dr Two", "email": email,
                                          "role": role, "password": PASSWORD})
    token = _login(client, email).json()["data"]["access_token"]
    return member["id"], email, _bearer(token)


def test_enrolment_shows_the_secret_once_and_login_changes_only_when_confirmed(client, org_a, engine):
    started = client.post("/auth/mfa/totp", headers=org_a.headers)
    assert started.status_code == 200, started.text
    data = started.json()["data"]
    uri = urllib.parse.urlparse(data["otpauth_uri"])
    query = urllib.parse.parse_qs(uri.query)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert query["secret"] == [data["secret"]] and query["issuer"] == ["Clinic A"]
    assert urllib.parse.unquote(uri.path) == f"/Clinic A:{org_a.admin_email}"
    assert (data["digits"], data["period"], data["algorithm"]) == (6, 30, "SHA1")
    assert _login(client, org_a.admin_email).status_code == 200  # pending: nothing changes yet

    wrong = client.post("/auth/mfa/totp/confirm", json={"code": "000000" if _code(data["secret"]) != "000000"
                                                        else "111111"}, headers=org_a.headers)
    assert wrong.status_code == 422 and error_of(wrong)["field"] == "code"
    confirmed = client.post("/auth/mfa/totp/confirm", json={"code": _code(data["secret"])}, headers=org_a.headers)
    assert confirmed.status_code == 200
    codes = confirmed.json()["data"]["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10 and all(len(c) == 11 and c[5] == "-" for c in codes)

    again = client.post("/auth/mfa/totp", headers=org_a.headers)
    assert again.status_code == 409 and error_of(again)["code"] == "CONFLICT"
    with engine.connect() as conn:
        trail = conn.execute(sa.text("SELECT action, coalesce(after::text, '') FROM audit_log WHERE org_id = :o "
                                     "AND action LIKE 'mfa%' ORDER BY created_at"), {"o": org_a.org_id}).all()
        stored = conn.execute(sa.text("SELECT code_hash FROM mfa_recovery_code WHERE staff_id = :s"),
                              {"s": org_a.admin_id}).scalars().all()
    assert [action for action, _ in trail] == ["mfa_enrolment_started", "mfa_enabled"]
    assert not any(data["secret"] in after for _, after in trail)
    assert len(stored) == 10 and not set(stored) & {c.replace("-", "") for c in codes}  # hashes only


def test_login_takes_two_steps_and_each_code_works_once(client, org_a, engine):
    secret, _ = _enrolled(client, org_a.headers)
    first = _login(client, org_a.admin_email)
    assert first.status_code == 202, first.text
    challenge = first.json()["data"]
    assert challenge["mfa_required"] is True and challenge["expires_in"] == 300
    assert "access_token" not in challenge
    # The code that confirmed the enrolment was used: a thief who saw it gets nothing.
    replay = client.post("/auth/mfa/verify", json={"mfa_token": challenge["mfa_token"],
                                                    "code": _CONFIRMED_WITH[secret]})
    assert replay.status_code == 401 and error_of(replay)["code"] == "INVALID_MFA_CODE"
    verified = client.post("/auth/mfa/verify", json={"mfa_token": challenge["mfa_token"], "code": _code(secret, 1)})
    assert verified.status_code == 200, verified.text
    tokens = verified.json()["data"]
    assert tokens["user"]["id"] == org_a.admin_id
    assert client.get("/patients", headers=_bearer(tokens["access_token"])).status_code == 200
    used = client.post("/auth/mfa/verify", json={"mfa_token": challenge["mfa_token"], "code": _code(secret, 1)})
    assert used.status_code == 401  # a challenge is used once
    with engine.connect() as conn:
        logins = conn.execute(sa.text("SELECT after->>'second_factor' FROM audit_log WHERE user_id = :u "
                                      "AND action = 'login' ORDER BY created_at"), {"u": org_a.admin_id}).scalars().all()
    assert logins[-1] == "totp"


def test_a_recovery_code_replaces_the_device_once(client, org_a, engine):
    _, codes = _enrolled(client, org_a.headers)
    typed = codes[3].upper().replace("-", " ")  # as a person might type it
    challenge = _login(client, org_a.admin_email).json()["data"]["mfa_token"]
    assert client.post("/auth/mfa/verify", json={"mfa_token": challenge, "code": typed}).status_code == 200
    challenge = _login(client, org_a.admin_email).json()["data"]["mfa_token"]
    again = client.post("/auth/mfa/verify", json={"mfa_token": challenge, "code": codes[3]})
    assert again.status_code == 401 and error_of(again)["code"] == "INVALID_MFA_CODE"
    assert client.post("/auth/mfa/verify", json={"mfa_token": challenge, "code": codes[4]}).status_code == 200


def test_a_challenge_dies_after_five_wrong_codes_or_five_minutes(client, org_a, engine):
    secret, _ = _enrolled(client, org_a.headers)
    challenge = _login(client, org_a.admin_email).json()["data"]["mfa_token"]
    for _ in range(5):
        wrong = client.post("/auth/mfa/verify", json={"mfa_token": challenge, "code": "12345"})
        assert wrong.status_code == 401
    spent = client.post("/auth/mfa/verify", json={"mfa_token": challenge, "code": _code(secret, 1)})
    assert spent.status_code == 401
    challenge = _login(client, org_a.admin_email).json()["data"]["mfa_token"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mfa_challenge SET expires_at = now() - interval '1 second' "
                             "WHERE staff_id = :s AND used_at IS NULL"), {"s": org_a.admin_id})
    expired = client.post("/auth/mfa/verify", json={"mfa_token": challenge, "code": _code(secret, 1)})
    assert expired.status_code == 401 and error_of(expired)["code"] == "INVALID_MFA_CODE"
    with engine.connect() as conn:
        failures = conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE user_id = :u AND action = 'mfa_failed'"),
                                {"u": org_a.admin_id}).scalar_one()
    assert failures == 5


def test_the_oauth_token_endpoint_refuses_a_member_with_a_second_factor(client, org_a):
    _enrolled(client, org_a.headers)
    response = client.post("/auth/token", data={"grant_type": "password", "username": org_a.admin_email,
                                                "password": PASSWORD})
    assert response.status_code == 403 and error_of(response)["code"] == "MFA_REQUIRED"


def test_an_admin_resets_a_members_second_factor(client, org_a, org_b, engine):
    member_id, email, headers = _member(client, org_a)
    enrolment = _enrolled(client, headers)
    assert _login(client, email).status_code == 202
    assert client.delete(f"/staff/{member_id}/mfa", headers=headers).status_code == 403  # a doctor may not
    assert client.delete(f"/staff/{member_id}/mfa", headers=org_b.headers).status_code == 404  # nor another org
    assert client.delete(f"/staff/{member_id}/mfa", headers=org_a.headers).status_code == 204
    assert _login(client, email).status_code == 200  # the password alone again
    restarted = client.post("/auth/mfa/totp", headers=headers)
    assert restarted.status_code == 200 and restarted.json()["data"]["secret"] != enrolment[0]
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT (SELECT count(*) FROM mfa_recovery_code WHERE staff_id = :s) + "
                                    "(SELECT count(*) FROM mfa_challenge WHERE staff_id = :s)"), {"s": member_id}).scalar_one()
        reset = conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE resource_id = :s AND action = 'mfa_reset'"),
                             {"s": member_id}).scalar_one()
    assert left == 0 and reset == 1


def test_a_role_that_requires_a_second_factor_grants_nothing_until_enrolled(app_with, make_org):
    strict = app_with(mfa_required_roles=("admin",))
    client = strict.test_client()
    org = make_org()
    first = _login(client, org.admin_email)
    assert first.status_code == 200
    data = first.json()["data"]
    assert data["mfa_enrolment_required"] is True
    headers = _bearer(data["access_token"])
    refused = client.get("/patients", headers=headers)
    assert refused.status_code == 403 and error_of(refused)["code"] == "INSUFFICIENT_SCOPE"
    assert client.get("/auth/me", headers=headers).status_code == 200
    refreshed = client.post("/auth/refresh", json={"refresh_token": data["refresh_token"]}).json()["data"]
    assert refreshed["mfa_enrolment_required"] is True  # a refresh does not lift it
    assert client.get("/patients", headers=_bearer(refreshed["access_token"])).status_code == 403
    secret, _ = _enrolled(client, headers)
    challenge = _login(client, org.admin_email)
    assert challenge.status_code == 202
    done = client.post("/auth/mfa/verify", json={"mfa_token": challenge.json()["data"]["mfa_token"],
                                                 "code": _code(secret, 1)}).json()["data"]
    assert "mfa_enrolment_required" not in done
    assert client.get("/patients", headers=_bearer(done["access_token"])).status_code == 200


def test_by_default_no_role_requires_a_second_factor(client, settings, make_org):
    assert settings.mfa_required_roles == ()
    assert "mfa_enrolment_required" not in _login(client, make_org().admin_email).json()["data"]


@pytest.mark.parametrize("path, body", [
    ("/auth/mfa/verify", {"mfa_token": "x"}),
    ("/auth/mfa/verify", {"mfa_token": "x", "code": "1" * 21}),
    ("/auth/mfa/verify", {"mfa_token": "", "code": "123456"}),
    ("/auth/mfa/verify", {"mfa_token": "unknown", "code": "123456", "extra": 1}),
    ("/auth/mfa/totp/confirm", {"code": ""}),
    ("/auth/mfa/totp/confirm", {"code": 123456}),
    ("/auth/mfa/totp/confirm", {"code": "12345a"}),
])
def test_bad_input_is_a_400_in_the_envelope(client, org_a, path, body):
    response = client.post(path, json=body, headers=org_a.headers)
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "VALIDATION_ERROR"


def test_an_unknown_challenge_is_401_and_confirming_nothing_is_409(client, org_a):
    unknown = client.post("/auth/mfa/verify", json={"mfa_token": "not-a-challenge", "code": "123456"})
    assert unknown.status_code == 401 and error_of(unknown)["code"] == "INVALID_MFA_CODE"
    nothing = client.post("/auth/mfa/totp/confirm", json={"code": "123456"}, headers=org_a.headers)
    assert nothing.status_code == 409 and error_of(nothing)["code"] == "CONFLICT"
