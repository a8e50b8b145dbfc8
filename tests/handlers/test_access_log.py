"""Reads of patient data leave an access row, committed before the response; the patient's history."""
import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import error_of
from tests.factories import build_world, next_slot, post, statements_sent

HEADERS = {"User-Agent": "chart-viewer/1.0", "X-Request-ID": "req-access-1"}


@pytest.fixture
def world(client, org_a):
    return build_world(org_a)


def access_rows(engine, org_id: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            sa.text("SELECT * FROM access_log WHERE org_id = :org ORDER BY seq"), {"org": org_id}).mappings()]


def test_getting_a_patient_records_who_read_it(client, world, engine):
    org = world.org
    response = client.get(f"/patients/{world.patient_id}", headers={**org.headers, **HEADERS})
    assert response.status_code == 200
    [row] = access_rows(engine, org.org_id)
    assert row["user_id"] == org.admin_id and row["action"] == "get" and row["resource"] == "patient"
    assert row["patient_ids"] == [world.patient_id]
    assert row["user_agent"] == "chart-viewer/1.0" and row["request_id"] == "req-access-1"
    assert row["ip_address"]


def test_a_list_records_the_patients_of_its_page_and_an_empty_page_nothing(client, world, engine):
    org = world.org
    second = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Rory"})
    assert client.get("/patients?pageSize=1", headers=org.headers).status_code == 200
    client.get("/patients?page=9", headers=org.headers)
    client.get(f"/patients/{org.branch_id}", headers=org.headers)  # a 404 shows nobody
    rows = access_rows(engine, org.org_id)
    assert [(r["action"], r["patient_ids"]) for r in rows] == [("list", [second["id"]])]


def test_appointments_prescriptions_and_transactions_name_their_patients(client, world, engine):
    org = world.org
    other = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Clara"})
    for patient_id in (world.patient_id, other["id"]):
        post(client, org, "/appointments", {"patient_id": patient_id, "staff_id": world.staff_id,
                                            "branch_id": world.branch_id, "date": next_slot()})
    prescription = post(client, org, "/prescriptions", {"patient_id": other["id"], "staff_id": world.staff_id,
                                                        "type": "glasses", "data": {}, "date": "2026-11-01T10:00:00Z"})
    post(client, org, "/transactions", {"patient_id": world.patient_id, "staff_id": org.admin_id, "amount": 5,
                                        "date": "2026-11-01T10:00:00Z"})
    client.get("/appointments?embed=patient", headers=org.headers)
    client.get(f"/prescriptions/{prescription['id']}?embed=patient,staff", headers=org.headers)
    client.get("/transactions", headers=org.headers)
    client.get("/branches", headers=org.headers)  # no patient data: no row
    rows = access_rows(engine, org.org_id)
    assert [(r["resource"], r["action"], sorted(r["patient_ids"])) for r in rows] == [
        ("appointment", "list", sorted([world.patient_id, other["id"]])),
        ("prescription", "get", [other["id"]]),
        ("transaction", "list", [world.patient_id]),
    ]


def test_the_access_row_is_committed_before_the_response(live_server, world, engine):
    org = world.org
    with httpx.Client(base_url=live_server, headers=org.headers, timeout=30) as http:
        for _ in range(5):
            assert http.get(f"/patients/{world.patient_id}").status_code == 200
            # Read on another connection the moment the response is in: no wait, no retry.
            assert len(access_rows(engine, org.org_id)) == _ + 1


def test_the_patients_history_lists_reads_and_changes_newest_first(client, world, org_b):
    org = world.org
    client.patch(f"/patients/{world.patient_id}", json={"phone": "555-0101"}, headers=org.headers)
    client.get(f"/patients/{world.patient_id}", headers={**org.headers, **HEADERS})
    history = client.get(f"/patients/{world.patient_id}/access-log", headers=org.headers)
    assert history.status_code == 200, history.text
    data = history.json()["data"]
    assert [(e["kind"], e["action"]) for e in data["entries"]] == [("read", "get"), ("change", "update"),
                                                                   ("change", "create")]
    assert data["total"] == 3 and data["entries"][0]["request_id"] == "req-access-1"
    assert data["entries"][1]["resource_id"] == world.patient_id
    paged_response = client.get(f"/patients/{world.patient_id}/access-log?page=2&pageSize=2", headers=org.headers)
    assert 'rel="prev"' in paged_response.headers["Link"]
    paged = paged_response.json()["data"]
    assert [e["action"] for e in paged["entries"]] == ["create"] and paged["total"] == 3
    client.delete(f"/patients/{world.patient_id}", headers=org.headers)
    after = client.get(f"/patients/{world.patient_id}/access-log", headers=org.headers).json()["data"]
    assert after["entries"][0]["action"] == "delete"
    foreign = client.get(f"/patients/{world.patient_id}/access-log", headers=org_b.headers)
    assert foreign.status_code == 404 and error_of(foreign)["code"] == "NOT_FOUND"


def test_access_rows_are_append_only_even_for_their_owner(owner_engine, client, world):
    client.get(f"/patients/{world.patient_id}", headers=world.org.headers)
    for statement in ("UPDATE access_log SET user_id = NULL WHERE org_id = :org",
                      "DELETE FROM access_log WHERE org_id = :org"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), owner_engine.begin() as conn:
            conn.execute(sa.text(statement), {"org": world.org.org_id})


def test_by_default_an_access_row_commits_without_waiting_for_the_flush(client, world, engine):
    from models import database

    primary = database.current_pools().writer
    sent = statements_sent(primary, lambda: client.get(f"/patients/{world.patient_id}", headers=world.org.headers))
    [recorded] = [s for s, _ in sent if "access_log" in s]
    assert recorded.startswith("SET LOCAL synchronous_commit TO off; ")
    with primary.connect() as conn:  # the setting ended with the statement's implicit transaction
        for _ in range(3):
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def test_access_log_synchronous_commit_waits_for_the_flush(app_with, world):
    strict_app = app_with(access_log_synchronous_commit=True)
    strict = strict_app.test_client()
    sent = statements_sent(strict_app.state.pools.writer,
                           lambda: strict.get(f"/patients/{world.patient_id}", headers=world.org.headers))
    [recorded] = [s for s, _ in sent if "access_log" in s]
    assert "synchronous_commit" not in recorded


def test_a_sync_page_of_patient_data_records_who_read_it(client, world, engine):
    org = world.org
    appointment = post(client, org, "/appointments", {"patient_id": world.patient_id, "staff_id": world.staff_id,
                                                      "branch_id": world.branch_id, "date": next_slot()})
    for path in ("/patients", "/appointments"):
        response = client.get(path, params={"updatedSince": appointment["created_at"][:4] + "-01-01T00:00:00Z"},
                              headers=org.headers)
        assert response.status_code == 200
    client.get("/branches", params={"updatedSince": "2026-01-01T00:00:00Z"}, headers=org.headers)
    rows = access_rows(engine, org.org_id)
    assert [(r["resource"], r["action"], r["patient_ids"]) for r in rows] == [
        ("patient", "sync", [world.patient_id]), ("appointment", "sync", [world.patient_id])]
