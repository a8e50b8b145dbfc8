"""Every resource through the one engine: the five operations, filters, embeds, isolation.

One table drives the generic tests; each resource's own rules have their own tests below it.
"""
from __future__ import annotations


import pytest

from tests.conftest import PASSWORD, error_of
from tests.factories import NAMES, RESOURCES, as_read, post





@pytest.mark.parametrize("name", NAMES)
def test_create_get_patch_list_delete(client, world_a, name):
    path, key, create, patch, _, _ = RESOURCES[name]
    org = world_a.org
    created = as_read(name, post(client, org, path, create(world_a)))
    assert created["org_id"] == org.org_id and created["deleted_at"] is None
    got = client.get(f"{path}/{created['id']}", headers=org.headers)
    assert got.status_code == 200 and got.json()["data"] == created
    patched = client.patch(f"{path}/{created['id']}", json=patch, headers=org.headers)
    assert patched.status_code == 200, patched.text
    after = patched.json()["data"]
    for field, value in patch.items():
        assert after[field] == value
    untouched = {k: v for k, v in created.items() if k not in patch and k not in ("updated_at", "last_updated")}
    assert {k: after[k] for k in untouched} == untouched
    assert after["updated_at"] > created["updated_at"]
    listed = client.get(path, headers=org.headers).json()["data"]
    assert created["id"] in [row["id"] for row in listed[key]]
    assert listed["total"] == len(listed[key])
    assert client.delete(f"{path}/{created['id']}", headers=org.headers).status_code == 204
    assert client.get(f"{path}/{created['id']}", headers=org.headers).status_code == 404
    assert client.delete(f"{path}/{created['id']}", headers=org.headers).status_code == 404
    listed = client.get(path, headers=org.headers).json()["data"]
    assert created["id"] not in [row["id"] for row in listed[key]]


@pytest.mark.parametrize("name", NAMES)
def test_pagination_and_total(client, world_a, name):
    path, key, create, _, _, _ = RESOURCES[name]
    org = world_a.org
    before = client.get(path, headers=org.headers).json()["data"]["total"]
    ids = [post(client, org, path, create(world_a))["id"] for _ in range(3)]
    page = client.get(f"{path}?page=1&pageSize=2", headers=org.headers).json()["data"]
    assert page["total"] == before + 3
    assert [row["id"] for row in page[key]] == ids[::-1][:2]
    second = client.get(f"{path}?page=2&pageSize=2", headers=org.headers).json()["data"]
    assert second[key][0]["id"] == ids[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_other_organizations_rows_are_404(client, world_a, world_b, name, method):
    path, _, create, patch, _, _ = RESOURCES[name]
    theirs = as_read(name, post(client, world_b.org, path, create(world_b)))
    kwargs = {"json": patch} if method == "patch" else {}
    response = getattr(client, method)(f"{path}/{theirs['id']}", headers=world_a.org.headers, **kwargs)
    assert response.status_code == 404 and error_of(response)["code"] == "NOT_FOUND"
    still = client.get(f"{path}/{theirs['id']}", headers=world_b.org.headers).json()["data"]
    assert still == theirs


@pytest.mark.parametrize("name", [n for n in NAMES if RESOURCES[n][4]])
def test_references_to_another_organization_are_422(client, world_a, world_b, name):
    path, _, create, _, references, _ = RESOURCES[name]
    for field, attribute in references.items():
        body = {**create(world_a), field: getattr(world_b, attribute)}
        response = client.post(path, json=body, headers=world_a.org.headers)
        assert response.status_code == 422, (field, response.text)
        assert error_of(response)["code"] == "INVALID_REFERENCE" and error_of(response)["field"] == field
        mine = post(client, world_a.org, path, create(world_a))
        moved = client.patch(f"{path}/{mine['id']}", json={field: getattr(world_b, attribute)},
                             headers=world_a.org.headers)
        assert moved.status_code == 422 and error_of(moved)["field"] == field


@pytest.mark.parametrize("name", [n for n in NAMES if RESOURCES[n][5]])
def test_each_embed_on_get_and_list(client, world_a, name):
    path, key, create, _, _, embeds = RESOURCES[name]
    org = world_a.org
    created = post(client, org, path, create(world_a))
    for embed in embeds:
        got = client.get(f"{path}/{created['id']}?embed={embed}", headers=org.headers).json()["data"]
        listed = client.get(f"{path}?embed={embed}", headers=org.headers).json()["data"][key]
        row = next(r for r in listed if r["id"] == created["id"])
        assert got[embed] == row[embed]
        if embed == "payments":
            assert got["payments"] == []
        else:
            assert got[embed]["id"] == created[f"{embed}_id"]
            assert "password_hash" not in got[embed]
    both = client.get(f"{path}/{created['id']}?embed={','.join(embeds)}", headers=org.headers).json()["data"]
    assert set(embeds) <= set(both)


@pytest.mark.parametrize("name", NAMES)
def test_org_id_query_and_body_must_match(client, world_a, world_b, name):
    path, _, create, _, _, _ = RESOURCES[name]
    org = world_a.org
    assert client.get(f"{path}?orgId={world_b.org.org_id}", headers=org.headers).status_code == 403
    response = client.post(path, json={**create(world_a), "org_id": world_b.org.org_id}, headers=org.headers)
    assert response.status_code == 403 and error_of(response)["code"] == "ORG_MISMATCH"


# --- filters -------------------------------------------------------------------------------------

def ids_of(client, org, url, key):
    response = client.get(url, headers=org.headers)
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["data"][key]]


def test_appointment_filters(client, world_a):
    org = world_a.org
    body = RESOURCES["appointment"].create(world_a)
    other_patient = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Rory"})["id"]
    first = post(client, org, "/appointments", {**body, "date": "2026-12-01T09:00:00Z"})
    second = post(client, org, "/appointments", {**body, "date": "2026-12-02T23:30:00Z", "status": "cancelled",
                                                  "patient_id": other_patient})
    assert ids_of(client, org, "/appointments?date=2026-12-01", "appointments") == [first["id"]]
    assert ids_of(client, org, "/appointments?status=cancelled", "appointments") == [second["id"]]
    assert ids_of(client, org, f"/appointments?patientId={other_patient}", "appointments") == [second["id"]]
    assert set(ids_of(client, org, f"/appointments?staffId={world_a.staff_id}", "appointments")) == {first["id"], second["id"]}
    assert ids_of(client, org, "/appointments?dateFrom=2026-12-02T00:00:00Z&dateTo=2026-12-03T00:00:00Z",
                  "appointments") == [second["id"]]
    assert set(ids_of(client, org, f"/appointments?branchId={org.branch_id}", "appointments")) == {first["id"], second["id"]}


def test_a_day_holds_its_first_and_last_microsecond_and_nothing_of_the_next(client, world_a):
    org = world_a.org
    # Cancelled, so that one staff member's overlapping slots are allowed.
    body = {**RESOURCES["appointment"].create(world_a), "status": "cancelled"}
    made = {at: post(client, org, "/appointments", {**body, "date": at})["id"] for at in (
        "2026-11-30T23:59:59.999999Z", "2026-12-01T00:00:00Z", "2026-12-01T23:59:59.999999Z",
        "2026-12-02T00:00:00Z")}
    assert set(ids_of(client, org, "/appointments?date=2026-12-01", "appointments")) == {
        made["2026-12-01T00:00:00Z"], made["2026-12-01T23:59:59.999999Z"]}
    last = post(client, org, "/appointments", {**body, "date": "9999-12-31T23:59:59.999999Z"})["id"]
    assert ids_of(client, org, "/appointments?date=9999-12-31", "appointments") == [last]


def test_transaction_filters(client, world_a):
    org = world_a.org
    body = RESOURCES["transaction"].create(world_a)
    cash = post(client, org, "/transactions", {**body, "method": "cash", "type": "payment", "date": "2026-10-05T10:00:00Z"})
    refund = post(client, org, "/transactions", {**body, "method": "card", "type": "refund", "date": "2026-11-05T10:00:00Z"})
    assert ids_of(client, org, "/transactions?method=cash", "transactions") == [cash["id"]]
    assert ids_of(client, org, "/transactions?type=refund", "transactions") == [refund["id"]]
    assert ids_of(client, org, "/transactions?dateFrom=2026-11-01T00:00:00Z", "transactions") == [refund["id"]]
    assert ids_of(client, org, "/transactions?dateTo=2026-11-01T00:00:00Z", "transactions") == [cash["id"]]
    assert set(ids_of(client, org, f"/transactions?patientId={world_a.patient_id}", "transactions")) == {cash["id"], refund["id"]}


def test_inventory_filters_including_low_stock(client, world_a):
    org = world_a.org
    body = RESOURCES["inventory_item"].create(world_a)
    low = post(client, org, "/inventory", {**body, "sku": "LOW", "quantity": 5, "reorder_point": 10, "category": "drugs"})
    ok = post(client, org, "/inventory", {**body, "sku": "OK", "quantity": 50, "reorder_point": 10, "status": "low_stock"})
    assert ids_of(client, org, "/inventory?lowStock=true", "inventory") == [low["id"]]
    assert ids_of(client, org, "/inventory?lowStock=false", "inventory") == [ok["id"]]
    assert ids_of(client, org, "/inventory?status=low_stock", "inventory") == [ok["id"]]
    assert ids_of(client, org, "/inventory?category=drugs", "inventory") == [low["id"]]
    assert set(ids_of(client, org, f"/inventory?supplierId={world_a.supplier_id}", "inventory")) == {low["id"], ok["id"]}
    assert set(ids_of(client, org, f"/inventory?branchId={org.branch_id}", "inventory")) == {low["id"], ok["id"]}


def test_staff_filters(client, world_a):
    org = world_a.org
    assert ids_of(client, org, "/staff?role=doctor", "staff") == [world_a.staff_id]
    assert set(ids_of(client, org, f"/staff?branchId={org.branch_id}", "staff")) == {world_a.staff_id, org.admin_id}


def test_community_filters(client, world_a):
    org = world_a.org
    news = post(client, org, "/community/posts", {"title": "A", "content": "x", "tags": ["news", "hr"]})
    doctor = client.post("/auth/login", json={"email": world_a.staff_email, "password": PASSWORD}).json()["data"]
    client.post("/community/posts", json={"title": "B", "content": "y", "tags": ["social"]},
                headers={"Authorization": f"Bearer {doctor['access_token']}"})
    assert ids_of(client, org, "/community/posts?tag=hr", "posts") == [news["id"]]
    assert ids_of(client, org, f"/community/posts?staffId={org.admin_id}", "posts") == [news["id"]]


def test_report_filters(client, world_a):
    org = world_a.org
    october = post(client, org, "/financial/reports", {"type": "monthly", "data": {}, "period": "2026-10-01T00:00:00Z"})
    yearly = post(client, org, "/financial/reports", {"type": "yearly", "data": {}, "period": "2026-01-01T00:00:00+00:00"})
    assert ids_of(client, org, "/financial/reports?type=yearly", "reports") == [yearly["id"]]
    assert ids_of(client, org, "/financial/reports?period=2026-10-01T02:00:00%2B02:00", "reports") == [october["id"]]
    assert ids_of(client, org, "/financial/reports?periodFrom=2026-06-01T00:00:00Z", "reports") == [october["id"]]


def test_branch_and_loan_and_supplier_filters(client, world_a):
    org = world_a.org
    closed = post(client, org, "/branches", {"name": "Closed", "status": "inactive"})
    assert ids_of(client, org, "/branches?status=inactive", "branches") == [closed["id"]]
    late = post(client, org, "/loans", {"lender": "L", "original_amount": 10, "start_date": "2026-01-01T00:00:00Z"})
    client.post(f"/loans/{late['id']}/standing", json={"status": "late"}, headers=org.headers)
    assert ids_of(client, org, "/loans?status=late", "loans") == [late["id"]]
    assert ids_of(client, org, "/suppliers?search=medsup", "suppliers") == [world_a.supplier_id]
