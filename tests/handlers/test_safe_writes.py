"""Safe writes: ETags and If-Match, idempotent creates, and no double bookings."""
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import error_of
from tests.factories import NAMES, RESOURCES, build_world, post


@pytest.fixture
def world(client, org_a):
    return build_world(org_a)


# --- ETag / If-Match / If-None-Match -------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_etag_changes_with_the_row_and_guards_changes(client, world, name):
    path, _, create, patch, _, _ = RESOURCES[name]
    org = world.org
    response = client.post(path, json=create(world), headers=org.headers)
    first_tag = response.headers["ETag"]
    row_id = response.json()["data"]["id"]
    assert first_tag.startswith('"') and first_tag.endswith('"')
    got = client.get(f"{path}/{row_id}", headers=org.headers)
    assert got.headers["ETag"] == first_tag
    not_modified = client.get(f"{path}/{row_id}", headers={**org.headers, "If-None-Match": first_tag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    changed = client.patch(f"{path}/{row_id}", json=patch, headers={**org.headers, "If-Match": first_tag})
    assert changed.status_code == 200
    second_tag = changed.headers["ETag"]
    assert second_tag != first_tag
    stale = client.patch(f"{path}/{row_id}", json=patch, headers={**org.headers, "If-Match": first_tag})
    assert stale.status_code == 412 and error_of(stale)["code"] == "PRECONDITION_FAILED"
    assert second_tag in error_of(stale)["message"] and stale.headers["ETag"] == second_tag
    assert client.delete(f"{path}/{row_id}", headers={**org.headers, "If-Match": first_tag}).status_code == 412
    assert client.get(f"{path}/{row_id}", headers={**org.headers, "If-None-Match": first_tag}).status_code == 200
    assert client.delete(f"{path}/{row_id}", headers={**org.headers, "If-Match": second_tag}).status_code == 204


def test_if_match_star_and_lists(client, world):
    org = world.org
    patient = client.post("/patients", json={"branch_id": org.branch_id, "name": "E"}, headers=org.headers)
    tag = patient.headers["ETag"]
    pid = patient.json()["data"]["id"]
    assert client.patch(f"/patients/{pid}", json={"name": "F"}, headers={**org.headers, "If-Match": "*"}).status_code == 200
    newer = client.get(f"/patients/{pid}", headers=org.headers).headers["ETag"]
    listed = f'"nope", {newer}'
    assert client.patch(f"/patients/{pid}", json={"name": "G"}, headers={**org.headers, "If-Match": listed}).status_code == 200
    assert client.patch(f"/patients/{pid}", json={"name": "H"}, headers={**org.headers, "If-Match": f"W/{tag}"}).status_code == 412


def test_required_if_match_answers_428(app_with, make_org):
    strict = app_with(require_if_match=True)
    org = make_org()
    client = strict.test_client()
    created = client.post("/patients", json={"branch_id": org.branch_id, "name": "R"}, headers=org.headers)
    pid = created.json()["data"]["id"]
    missing = client.patch(f"/patients/{pid}", json={"name": "S"}, headers=org.headers)
    assert missing.status_code == 428 and error_of(missing)["code"] == "PRECONDITION_REQUIRED"
    assert client.delete(f"/patients/{pid}", headers=org.headers).status_code == 428
    with_tag = {**org.headers, "If-Match": created.headers["ETag"]}
    assert client.patch(f"/patients/{pid}", json={"name": "S"}, headers=with_tag).status_code == 200


# --- Idempotency-Key -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_same_key_same_body_replays_without_a_second_row(client, world, name):
    path, key, create, _, _, _ = RESOURCES[name]
    org = world.org
    body = create(world)
    headers = {**org.headers, "Idempotency-Key": str(uuid.uuid4())}
    before = client.get(path, headers=org.headers).json()["data"]["total"]
    first = client.post(path, json=body, headers=headers)
    second = client.post(path, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert second.headers["ETag"] == first.headers["ETag"]
    assert client.get(path, headers=org.headers).json()["data"]["total"] == before + 1


def test_same_key_other_body_is_422(client, world):
    org = world.org
    headers = {**org.headers, "Idempotency-Key": "reused-key"}
    client.post("/patients", json={"branch_id": org.branch_id, "name": "One"}, headers=headers)
    other = client.post("/patients", json={"branch_id": org.branch_id, "name": "Two"}, headers=headers)
    assert other.status_code == 422 and error_of(other)["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_keys_belong_to_one_user(client, make_org):
    one, two = make_org(), make_org()
    key = {"Idempotency-Key": "shared-key"}
    mine = client.post("/patients", json={"branch_id": one.branch_id, "name": "Mine"}, headers={**one.headers, **key})
    theirs = client.post("/patients", json={"branch_id": two.branch_id, "name": "Mine"}, headers={**two.headers, **key})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["data"]["id"] != theirs.json()["data"]["id"]
    assert "Idempotent-Replayed" not in theirs.headers


def test_expired_keys_are_forgotten(client, world, engine):
    import sqlalchemy as sa

    org = world.org
    headers = {**org.headers, "Idempotency-Key": "old-key"}
    first = client.post("/patients", json={"branch_id": org.branch_id, "name": "Old"}, headers=headers)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE idempotency_key SET expires_at = now() - interval '1 second' "
                             "WHERE key = 'old-key' AND user_id = :u"), {"u": org.admin_id})
    again = client.post("/patients", json={"branch_id": org.branch_id, "name": "Old"}, headers=headers)
    assert again.status_code == 201 and again.json()["data"]["id"] != first.json()["data"]["id"]


def test_failed_create_does_not_burn_the_key(client, world):
    org = world.org
    headers = {**org.headers, "Idempotency-Key": "retry-after-422"}
    refused = client.post("/patients", json={"branch_id": str(uuid.uuid4()), "name": "X"}, headers=headers)
    assert refused.status_code == 422
    fixed = client.post("/patients", json={"branch_id": str(uuid.uuid4()), "name": "X"}, headers=headers)
    assert fixed.status_code == 422  # same body, re-executed, not a stored replay
    assert "Idempotent-Replayed" not in fixed.headers


def test_concurrent_requests_with_one_key_create_one_row(live_server, world):
    org = world.org
    body = {"branch_id": org.branch_id, "name": f"Concurrent {uuid.uuid4().hex[:6]}"}
    headers = {**org.headers, "Idempotency-Key": str(uuid.uuid4())}
    with httpx.Client(base_url=live_server, timeout=30) as http:
        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(lambda _: http.post("/patients", json=body, headers=headers), range(10)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {201, 409}, statuses
        ids = {r.json()["data"]["id"] for r in responses if r.status_code == 201}
        assert len(ids) == 1
        found = http.get("/patients", params={"search": body["name"]}, headers=org.headers).json()["data"]
        assert found["total"] == 1


# --- double bookings -----------------------------------------------------------------------------

def booking(world, start, **fields):
    return {"patient_id": world.patient_id, "staff_id": world.staff_id, "branch_id": world.branch_id,
            "date": start, **fields}


def test_overlaps_are_refused_adjacent_slots_are_not(client, world):
    org = world.org
    first = post(client, org, "/appointments", booking(world, "2031-03-01T09:00:00Z", duration_minutes=60))
    assert first["duration_minutes"] == 60
    overlap = client.post("/appointments", json=booking(world, "2031-03-01T09:30:00Z"), headers=org.headers)
    assert overlap.status_code == 409 and error_of(overlap)["field"] == "date"
    same_start_other_zone = client.post("/appointments", json=booking(world, "2031-03-01T10:15:00+01:00"), headers=org.headers)
    assert same_start_other_zone.status_code == 409
    adjacent = post(client, org, "/appointments", booking(world, "2031-03-01T10:00:00Z"))
    assert adjacent["duration_minutes"] == 30  # the configured default
    other = post(client, org, "/staff", {"branch_id": org.branch_id, "name": "Dr Two", "role": "doctor",
                                          "email": f"two-{uuid.uuid4().hex[:6]}@example.com", "password": "password123456"})
    post(client, org, "/appointments", {**booking(world, "2031-03-01T09:30:00Z"), "staff_id": other["id"]})


def test_cancelled_or_deleted_bookings_free_the_slot(client, world):
    org = world.org
    first = post(client, org, "/appointments", booking(world, "2031-04-01T09:00:00Z"))
    client.patch(f"/appointments/{first['id']}", json={"status": "cancelled"}, headers=org.headers)
    second = post(client, org, "/appointments", booking(world, "2031-04-01T09:00:00Z"))
    reopened = client.patch(f"/appointments/{first['id']}", json={"status": "scheduled"}, headers=org.headers)
    assert reopened.status_code == 409
    client.delete(f"/appointments/{second['id']}", headers=org.headers)
    post(client, org, "/appointments", booking(world, "2031-04-01T09:10:00Z"))


def test_moving_a_booking_onto_another_is_refused(client, world):
    org = world.org
    post(client, org, "/appointments", booking(world, "2031-05-01T09:00:00Z"))
    second = post(client, org, "/appointments", booking(world, "2031-05-01T11:00:00Z"))
    moved = client.patch(f"/appointments/{second['id']}", json={"date": "2031-05-01T09:15:00Z"}, headers=org.headers)
    assert moved.status_code == 409
    longer = client.patch(f"/appointments/{second['id']}", json={"date": "2031-05-01T08:00:00Z", "duration_minutes": 90},
                          headers=org.headers)
    assert longer.status_code == 409


def test_twenty_concurrent_bookings_of_one_slot_create_exactly_one(live_server, world):
    org = world.org
    body = booking(world, "2031-06-01T09:00:00Z")
    with httpx.Client(base_url=live_server, headers=org.headers, timeout=30) as http:
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(lambda _: http.post("/appointments", json=body).status_code, range(20)))
        assert statuses.count(201) == 1 and statuses.count(409) == 19, statuses
        day = http.get("/appointments", params={"date": "2031-06-01", "staffId": world.staff_id}).json()["data"]
        assert day["total"] == 1
