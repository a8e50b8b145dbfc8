"""Tokens other services can verify: the JWKS of a real server, read by PyJWT's PyJWKClient (what
docs/client-guide.md tells a second service to do), and a key rotation."""
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from models import signing
from tests.conftest import PASSWORD, TEST_SIGNING_KEY, error_of, spawn_server


def _public_file(private_path, to):
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    to.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    return to


@pytest.fixture(scope="module")
def rotated_server(database_url, tmp_path_factory):
    """A server in the middle of a rotation: a new key signs, the session's key (public half only)
    still verifies the tokens it signed."""
    folder = tmp_path_factory.mktemp("rotation")
    new_kid = signing.generate(folder / "new.pem")
    previous = _public_file(TEST_SIGNING_KEY, folder / "previous.pub")
    process, base = spawn_server(database_url, JWT_SIGNING_KEY_FILE=str(folder / "new.pem"),
                                 JWT_VERIFICATION_KEY_FILES=str(previous))
    yield base, new_kid
    process.terminate()
    process.wait(timeout=30)


def _verify_elsewhere(base: str, token: str, settings) -> dict:
    """What a second service does: the key from the JWKS by the token's kid; ES256 pinned."""
    key = jwt.PyJWKClient(f"{base}/.well-known/jwks.json").get_signing_key_from_jwt(token)
    return jwt.decode(token, key, algorithms=["ES256"], audience=settings.jwt_audience,
                      issuer=settings.jwt_issuer, options={"require": ["exp", "iat", "sub", "org_id"]})


def test_another_service_verifies_tokens_with_the_served_keys_during_a_rotation(rotated_server, org_a, settings):
    base, new_kid = rotated_server
    answer = httpx.get(f"{base}/.well-known/jwks.json")
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "public, max-age=300"
    kids = {key["kid"] for key in answer.json()["keys"]}
    previous_kid = jwt.get_unverified_header(org_a.access_token)["kid"]
    assert kids == {new_kid, previous_kid}
    assert not any("d" in key for key in answer.json()["keys"])

    # A token of the previous key (signed before the rotation) still works here...
    me = httpx.get(f"{base}/auth/me", headers=org_a.headers)
    assert me.status_code == 200 and me.json()["data"]["id"] == org_a.admin_id
    # ...and new ones carry the new key; another service verifies both with the JWKS alone.
    login = httpx.post(f"{base}/auth/login", json={"email": org_a.admin_email, "password": PASSWORD})
    fresh = login.json()["data"]["access_token"]
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    # A refresh token of the old key's time is no JWT: it goes on, into a token of the new key.
    refreshed = httpx.post(f"{base}/auth/refresh", json={"refresh_token": org_a.refresh_token})
    assert refreshed.status_code == 200, refreshed.text
    rotated = refreshed.json()["data"]["access_token"]
    assert jwt.get_unverified_header(rotated)["kid"] == new_kid
    for token in (org_a.access_token, fresh, rotated):
        claims = _verify_elsewhere(base, token, settings)
        assert claims["sub"] == org_a.admin_id and claims["org_id"] == org_a.org_id


def test_a_key_no_longer_listed_stops_verifying(rotated_server, client, org_a, settings):
    base, _ = rotated_server
    fresh = httpx.post(f"{base}/auth/login", json={"email": org_a.admin_email, "password": PASSWORD})
    token = fresh.json()["data"]["access_token"]
    # The session's app knows only its own key: the new key's token is not its to accept.
    refused = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401 and error_of(refused)["code"] == "UNAUTHORIZED"
    with pytest.raises(jwt.PyJWKClientError):
        jwt.PyJWKClient(f"{base}/.well-known/jwks.json").get_signing_key("not-a-kid-of-this-server")


def test_the_served_jwks_matches_the_spec(client):
    response = client.get("/.well-known/jwks.json")  # validated against the spec in tests
    assert response.status_code == 200
    assert [key["kid"] for key in response.json()["keys"]] == [
        signing.kid_of(serialization.load_pem_private_key(TEST_SIGNING_KEY.read_bytes(), None).public_key())]
