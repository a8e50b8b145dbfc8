"""Login, refresh rotation, reuse detection, logout and token checks."""
import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from models import signing
from tests.conftest import PASSWORD, TEST_SIGNING_KEY, error_of, sign_token


def login(client, email, password=PASSWORD):
    return client.post("/auth/login", json={"email": email, "password": password})


def test_login_returns_tokens_and_the_user_without_secrets(client, org_a):
    response = login(client, org_a.admin_email.upper())  # emails are case-insensitive
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["token_type"] == "Bearer" and data["expires_in"] == 900
    assert data["user"]["id"] == org_a.admin_id
    assert "password_hash" not in data["user"] and "password" not in data["user"]


def _test_public_key():
    return serialization.load_pem_private_key(TEST_SIGNING_KEY.read_bytes(), password=None).public_key()


def test_access_token_claims(client, org_a, settings):
    header = jwt.get_unverified_header(org_a.access_token)
    assert header["alg"] == "ES256" and header["kid"] == signing.kid_of(_test_public_key())
    claims = jwt.decode(org_a.access_token, _test_public_key(), algorithms=["ES256"],
                        audience=settings.jwt_audience)
    assert claims["sub"] == org_a.admin_id and claims["org_id"] == org_a.org_id
    assert claims["roles"] == ["admin"]
    assert "patients:write" in claims["scope"].split()
    assert claims["exp"] - claims["iat"] == 900
    assert {"jti", "iss", "aud"} <= set(claims)


def test_unknown_email_and_wrong_password_answer_identically(client, org_a):
    wrong_password = login(client, org_a.admin_email, "not the password")
    unknown_email = login(client, "nobody@example.com", "not the password")
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert error_of(wrong_password) == error_of(unknown_email)
    assert error_of(wrong_password)["code"] == "INVALID_CREDENTIALS"


def test_password_longer_than_72_bytes_is_a_400(client, org_a):
    response = login(client, org_a.admin_email, "é" * 40)  # 40 characters, 80 bytes
    assert response.status_code == 400 and error_of(response)["field"] == "password"


def test_me_returns_the_caller_with_roles_and_scopes(client, org_a):
    response = client.get("/auth/me", headers=org_a.headers)
    assert response.status_code == 200
    me = response.json()["data"]
    assert me["id"] == org_a.admin_id and me["roles"] == ["admin"]
    assert "roles:write" in me["scopes"]


def test_refresh_rotates_and_the_old_token_stops_working(client, org_a):
    first = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token})
    assert first.status_code == 200
    new_pair = first.json()["data"]
    assert new_pair["refresh_token"] != org_a.refresh_token
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {new_pair['access_token']}"}).status_code == 200
    second = client.post("/auth/refresh", json={"refresh_token": new_pair["refresh_token"]})
    assert second.status_code == 200


def test_reusing_a_rotated_token_revokes_the_whole_family(client, org_a, engine):
    rotated = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token}).json()["data"]
    # The client moved on (its new token was used): the old one coming back is a thief's, even
    # within REFRESH_GRACE_SECONDS (tests/handlers/test_sessions.py has the double submit).
    latest = client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]}).json()["data"]
    reuse = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token})
    assert reuse.status_code == 401 and error_of(reuse)["code"] == "INVALID_TOKEN"
    # The thief's replay also killed the legitimate successor.
    successor = client.post("/auth/refresh", json={"refresh_token": latest["refresh_token"]})
    assert successor.status_code == 401
    with engine.connect() as conn:
        reuse_rows = conn.execute(
            sa.text("SELECT count(*) FROM audit_log WHERE org_id = :o AND action = 'token_reuse'"),
            {"o": org_a.org_id},
        ).scalar_one()
    # Only the replay of a rotated token is theft; the successor was merely revoked with its family.
    assert reuse_rows == 1


def test_logout_revokes_and_is_audited(client, org_a, engine):
    assert client.post("/auth/logout", json={"refresh_token": org_a.refresh_token}).status_code == 204
    after = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token})
    assert after.status_code == 401
    assert client.post("/auth/logout", json={"refresh_token": "unknown"}).status_code == 204
    with engine.connect() as conn:
        actions = conn.execute(
            sa.text("SELECT action FROM audit_log WHERE org_id = :o AND resource = 'session' ORDER BY created_at"),
            {"o": org_a.org_id},
        ).scalars().all()
    assert actions == ["login", "logout"]


def test_failed_login_for_a_known_account_is_audited(client, org_a, engine):
    login(client, org_a.admin_email, "wrong password")
    with engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT count(*) FROM audit_log WHERE org_id = :o AND action = 'login_failed'"),
            {"o": org_a.org_id},
        ).scalar_one()
    assert count == 1


def test_deleted_staff_can_neither_log_in_nor_refresh(client, org_a, engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE staff SET deleted_at = now() WHERE id = :id"), {"id": org_a.admin_id})
    assert login(client, org_a.admin_email).status_code == 401
    assert client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token}).status_code == 401


def test_expired_refresh_token_is_refused(client, org_a, engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE session SET expires_at = now() - interval '1 second' WHERE user_id = :id"),
                     {"id": org_a.admin_id})
    response = client.post("/auth/refresh", json={"refresh_token": org_a.refresh_token})
    assert response.status_code == 401 and error_of(response)["code"] == "INVALID_TOKEN"


def _forge(settings, org, **changes):
    now = int(time.time())
    claims = {"sub": org.admin_id, "sid": org.session_id, "org_id": org.org_id, "roles": ["admin"], "scope": "patients:read",
              "jti": "x", "iat": now, "exp": now + 60, "iss": settings.jwt_issuer, "aud": settings.jwt_audience}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_the_public_key(claims: dict) -> str:
    """Algorithm confusion: an HMAC keyed with the server's public key (which anyone has)."""
    kid = signing.kid_of(_test_public_key())
    public_pem = _test_public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    signed = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(hmac.new(public_pem, signed.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize("case", ["expired", "wrong_key", "unknown_kid", "alg_none", "hs256_public_key", "tampered",
                                  "no_exp", "string_exp", "string_iat", "number_sub", "wrong_audience",
                                  "wrong_issuer", "garbage", "basic_scheme", "no_session", "session_not_a_uuid",
                                  "unknown_session", "another_members_session"])
def test_bad_access_tokens_are_401_with_www_authenticate(client, org_a, org_b, settings, case):
    stranger = ec.generate_private_key(ec.SECP256R1())
    if case == "expired":
        token = sign_token(_forge(settings, org_a, exp=int(time.time()) - 10))
    elif case == "wrong_key":  # signed by another key that claims to be ours
        token = sign_token(_forge(settings, org_a), stranger, kid=signing.kid_of(_test_public_key()))
    elif case == "unknown_kid":
        token = sign_token(_forge(settings, org_a), stranger)
    elif case == "alg_none":
        token = jwt.encode(_forge(settings, org_a), None, algorithm="none",
                           headers={"kid": signing.kid_of(_test_public_key())})
    elif case == "hs256_public_key":
        token = _hs256_with_the_public_key(_forge(settings, org_a))
    elif case == "tampered":
        good = sign_token(_forge(settings, org_a))
        forged = sign_token(_forge(settings, org_a, scope="patients:read patients:write"), stranger)
        token = ".".join(forged.split(".")[:2] + [good.split(".")[2]])
    elif case == "no_exp":
        token = sign_token(_forge(settings, org_a, exp=None))
    elif case in ("string_exp", "string_iat"):  # PyJWT accepts both: it calls int() on them
        claim = case.split("_")[1]
        token = sign_token(_forge(settings, org_a, **{claim: str(int(time.time()) + 60)}))
    elif case == "number_sub":
        token = sign_token(_forge(settings, org_a, sub=12345))
    elif case == "wrong_audience":
        token = sign_token(_forge(settings, org_a, aud="someone-else"))
    elif case == "wrong_issuer":
        token = sign_token(_forge(settings, org_a, iss="someone-else"))
    elif case == "no_session":  # every access token names its session
        token = sign_token(_forge(settings, org_a, sid=None))
    elif case == "session_not_a_uuid":
        token = sign_token(_forge(settings, org_a, sid="not-a-session"))
    elif case == "unknown_session":
        token = sign_token(_forge(settings, org_a, sid=str(uuid.uuid4())))
    elif case == "another_members_session":  # a genuine session, but someone else's
        token = sign_token(_forge(settings, org_a, sid=org_b.session_id))
    else:
        token = "not.a.token"
    scheme = "Basic" if case == "basic_scheme" else "Bearer"
    response = client.get("/patients", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 401, case
    # Again: a token is verified once and then kept; the kept copy must be refused the same way.
    response = client.get("/patients", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 401, case
    assert error_of(response)["code"] == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_the_session_key_signs_is_accepted(client, org_a, settings):
    """The forgeries above fail for their flaw alone: the same claims, properly signed, pass."""
    response = client.get("/patients", headers={"Authorization": f"Bearer {sign_token(_forge(settings, org_a))}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("org_id", [None, ""])
def test_a_token_without_an_organization_is_403(client, org_a, settings, org_id):
    claims = {**_forge(settings, org_a), "org_id": org_id}
    if org_id is None:
        del claims["org_id"]
    token = sign_token(claims)
    response = client.get("/patients", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403 and error_of(response)["code"] == "ORG_CONTEXT_REQUIRED"


def test_missing_token_is_401(client):
    response = client.get("/patients")
    assert response.status_code == 401 and error_of(response)["code"] == "UNAUTHORIZED"


def test_the_oauth_token_endpoint_speaks_rfc_6749(client, org_a):
    """What OAuth tools (Swagger UI's Authorize) send and expect: a form, a plain token answer."""
    response = client.post("/auth/token", data={"grant_type": "password", "username": org_a.admin_email,
                                                "password": PASSWORD, "scope": "patients:read", "client_id": ""})
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] > 0 and "patients:write" in token["scope"].split()
    assert response.headers["cache-control"] == "no-store"
    assert client.get("/patients", headers={"Authorization": f"Bearer {token['access_token']}"}).status_code == 200
    renewed = client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    assert renewed.status_code == 200 and renewed.json()["refresh_token"] != token["refresh_token"]
    wrong = client.post("/auth/token", data={"grant_type": "password", "username": org_a.admin_email, "password": "nope"})
    assert wrong.status_code == 401 and error_of(wrong)["code"] == "INVALID_CREDENTIALS"
    missing = client.post("/auth/token", data={"grant_type": "password", "username": org_a.admin_email})
    assert missing.status_code == 400 and error_of(missing)["field"] == "password"
    as_json = client.post("/auth/token", json={"grant_type": "password"})
    assert as_json.status_code == 415
