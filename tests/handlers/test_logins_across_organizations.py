"""One login, several clinics: an address is unique per organization (case-insensitive, NFKC), the
login asks which organization when the password opens several, and no admin learns from a 409
whether an address logs in elsewhere."""
import unicodedata
import uuid

from tests.conftest import PASSWORD, error_of
from tests.factories import post


def _hire(client, org, email, password=PASSWORD, role="doctor"):
    return post(client, org, "/staff", {"branch_id": org.branch_id, "name": "Dr Locum", "email": email,
                                        "role": role, "password": password})


def _full_width(email: str) -> str:
    """The same address in full-width letters (U+FF01..U+FF5E), which NFKC folds back."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and c != "@" else c for c in email)


def test_a_locum_works_for_two_organizations_with_one_address(client, make_org):
    north, south = make_org("North Clinic"), make_org("South Clinic")
    email = f"locum-{uuid.uuid4().hex[:8]}@example.com"
    at_north = _hire(client, north, email)
    at_south = _hire(client, south, email.upper())  # no 409: south's admin learns nothing of north
    asked = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert asked.status_code == 202, asked.text
    choice = asked.json()["data"]
    assert choice["organization_required"] is True and "access_token" not in choice
    assert sorted((o["org_id"], o["name"]) for o in choice["organizations"]) == sorted(
        [(north.org_id, "North Clinic"), (south.org_id, "South Clinic")])
    for org, member in ((north, at_north), (south, at_south)):
        chosen = client.post("/auth/login", json={"email": email, "password": PASSWORD, "org_id": org.org_id})
        assert chosen.status_code == 200, chosen.text
        data = chosen.json()["data"]
        assert data["user"]["id"] == member["id"] and data["user"]["org_id"] == org.org_id
        me = client.get("/auth/me", headers={"Authorization": f"Bearer {data['access_token']}"})
        assert me.json()["data"]["org_id"] == org.org_id
    token = client.post("/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD})
    assert token.status_code == 403 and error_of(token)["code"] == "ORGANIZATION_REQUIRED"


def test_the_password_chooses_and_the_other_organization_stays_unnamed(client, make_org):
    north, south = make_org("North Clinic"), make_org("South Clinic")
    email = f"locum-{uuid.uuid4().hex[:8]}@example.com"
    _hire(client, north, email, password="the north password")
    _hire(client, south, email, password="the south password")
    logged_in = client.post("/auth/login", json={"email": email, "password": "the south password"})
    assert logged_in.status_code == 200 and logged_in.json()["data"]["user"]["org_id"] == south.org_id
    assert north.org_id not in logged_in.text
    # Naming an organization the password does not open looks like any wrong password.
    elsewhere = client.post("/auth/login", json={"email": email, "password": "the south password",
                                                 "org_id": north.org_id})
    unknown = client.post("/auth/login", json={"email": email, "password": "the south password",
                                               "org_id": str(uuid.uuid4())})
    assert elsewhere.status_code == unknown.status_code == 401
    assert error_of(elsewhere) == error_of(unknown) and error_of(unknown)["code"] == "INVALID_CREDENTIALS"


def test_a_full_width_look_alike_is_the_same_address(client, org_a):
    email = f"nurse-{uuid.uuid4().hex[:8]}@example.com"
    look_alike = _full_width(email)
    assert look_alike != email and unicodedata.normalize("NFKC", look_alike) == email
    _hire(client, org_a, email)
    taken = client.post("/staff", json={"branch_id": org_a.branch_id, "name": "Impostor", "email": look_alike,
                                        "role": "nurse", "password": PASSWORD}, headers=org_a.headers)
    assert taken.status_code == 409 and error_of(taken)["field"] == "email"
    for typed in (look_alike, email.upper()):
        assert client.post("/auth/login", json={"email": typed, "password": PASSWORD}).status_code == 200, typed
