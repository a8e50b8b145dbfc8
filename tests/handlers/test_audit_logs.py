"""The audit trail: one row per change in the same transaction, sign-ins and role changes, read-only."""
import contextlib
import uuid

import pytest
import sqlalchemy as sa

from tests.conftest import PASSWORD, error_of
from tests.factories import NAMES, RESOURCES, as_read, build_world, post



@pytest.fixture
def world(client, org_a):
    return build_world(org_a)


def audit_rows(engine, org_id, **where):
    clauses = " AND ".join(f"{k} = :{k}" for k in where)
    with engine.connect() as conn:
        return conn.execute(sa.text(
            f"SELECT * FROM audit_log WHERE org_id = :org_id {'AND ' + clauses if clauses else ''} ORDER BY created_at, id"
        ), {"org_id": org_id, **where}).mappings().all()


@pytest.mark.parametrize("name", NAMES)
def test_create_update_delete_write_one_row_each(client, world, engine, name):
    path, _, create, patch, _, _ = RESOURCES[name]
    org = world.org
    headers = {**org.headers, "X-Request-ID": f"audit-{name}", "User-Agent": "front-desk/1.0"}
    created = client.post(path, json=create(world), headers=headers).json()["data"]
    client.patch(f"{path}/{created['id']}", json=patch, headers=headers)
    client.delete(f"{path}/{created['id']}", headers=headers)
    rows = audit_rows(engine, org.org_id, resource_id=created["id"])
    assert [r["action"] for r in rows] == ["create", "update", "delete"]
    create_row, update_row, delete_row = rows
    assert all(r["resource"] == name for r in rows)
    assert all(str(r["user_id"]) == org.admin_id for r in rows)
    assert all(r["request_id"] == f"audit-{name}" and r["user_agent"] == "front-desk/1.0" for r in rows)
    assert create_row["before"] is None and create_row["after"]["id"] == created["id"]
    for field, value in patch.items():
        assert update_row["after"][field] == value
        assert update_row["before"][field] == created.get(field)
    assert delete_row["before"]["deleted_at"] is None and delete_row["after"]["deleted_at"] is not None
    for row in rows:
        assert "password_hash" not in (row["after"] or {}) and "password" not in (row["after"] or {})


@pytest.mark.parametrize("name", NAMES)
def test_rejected_requests_write_nothing(client, world, engine, name):
    path, key, create, _, _, _ = RESOURCES[name]
    org = world.org
    before = len(audit_rows(engine, org.org_id))
    total = client.get(path, headers=org.headers).json()["data"]["total"]
    assert client.post(path, json={**create(world), "unknown_field": 1}, headers=org.headers).status_code == 400
    assert client.patch(f"{path}/{uuid.uuid4()}", json=RESOURCES[name][3], headers=org.headers).status_code == 404
    assert client.delete(f"{path}/{uuid.uuid4()}", headers=org.headers).status_code == 404
    assert len(audit_rows(engine, org.org_id)) == before
    assert client.get(path, headers=org.headers).json()["data"]["total"] == total


def test_conflict_writes_nothing(client, world, engine):
    org = world.org
    body = {"branch_id": org.branch_id, "name": "X", "sku": "DUP", "price": 1}
    post(client, org, "/inventory", body)
    before = len(audit_rows(engine, org.org_id))
    assert client.post("/inventory", json=body, headers=org.headers).status_code == 409
    assert len(audit_rows(engine, org.org_id)) == before


@contextlib.contextmanager
def audit_rows_refused(engine, org_id):
    """The database refuses every audit row of one organization, as broken storage would: the
    refusal comes from PostgreSQL, so it reaches a create whose audit row is part of its own
    statement as surely as one written by a second statement."""
    trigger = f"refuse_audit_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE OR REPLACE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit storage is broken'; END $$"))
        conn.execute(sa.text(f"CREATE TRIGGER {trigger} BEFORE INSERT ON audit_log FOR EACH ROW "
                             f"WHEN (NEW.org_id = '{uuid.UUID(org_id)}') EXECUTE FUNCTION test_refuse_audit()"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TRIGGER {trigger} ON audit_log"))


@pytest.mark.parametrize("name", NAMES)
def test_failed_audit_rolls_the_change_back(client, world, owner_engine, name):
    path, key, create, patch, _, _ = RESOURCES[name]
    org = world.org
    existing = as_read(name, post(client, org, path, create(world)))
    total = client.get(path, headers=org.headers).json()["data"]["total"]
    with audit_rows_refused(owner_engine, org.org_id):
        failed_create = client.post(path, json=create(world), headers=org.headers)
        failed_update = client.patch(f"{path}/{existing['id']}", json=patch, headers=org.headers)
        failed_delete = client.delete(f"{path}/{existing['id']}", headers=org.headers)
    assert {failed_create.status_code, failed_update.status_code, failed_delete.status_code} == {500}
    assert error_of(failed_create)["code"] == "INTERNAL_ERROR"
    assert client.get(path, headers=org.headers).json()["data"]["total"] == total
    assert client.get(f"{path}/{existing['id']}", headers=org.headers).json()["data"] == existing


def test_trail_is_append_only_in_the_database(engine, owner_engine, org_a):
    """The API's role lacks the privileges; even the owner meets the trigger."""
    for statement in ("UPDATE audit_log SET action = 'x' WHERE org_id = :org",
                      "DELETE FROM audit_log WHERE org_id = :org", "TRUNCATE audit_log"):
        with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="permission denied"):
            conn.execute(sa.text(statement), {"org": org_a.org_id})
        with owner_engine.begin() as conn, pytest.raises(sa.exc.DBAPIError, match="append-only"):
            conn.execute(sa.text(statement), {"org": org_a.org_id})


def test_list_filters_and_isolation(client, world, org_b):
    org = world.org
    patient = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Audited"})
    client.patch(f"/patients/{patient['id']}", json={"phone": "1"}, headers=org.headers)
    page = client.get(f"/audit-logs?resource=patient&resourceId={patient['id']}", headers=org.headers).json()["data"]
    assert [r["action"] for r in page["audit_logs"]] == ["update", "create"] and page["total"] == 2
    updates = client.get(f"/audit-logs?action=update&resourceId={patient['id']}", headers=org.headers).json()["data"]
    assert updates["total"] == 1 and updates["audit_logs"][0]["after"]["phone"] == "1"
    mine = client.get(f"/audit-logs?userId={org.admin_id}&pageSize=100", headers=org.headers).json()["data"]
    assert mine["total"] >= 2
    future = client.get("/audit-logs?from=2999-01-01T00:00:00Z", headers=org.headers).json()["data"]
    assert future == {"audit_logs": [], "total": 0, "total_estimated": False}
    theirs = client.get(f"/audit-logs?resourceId={patient['id']}", headers=org_b.headers).json()["data"]
    assert theirs == {"audit_logs": [], "total": 0, "total_estimated": False}
    everything_b = client.get("/audit-logs?pageSize=100", headers=org_b.headers).json()["data"]["audit_logs"]
    assert all(r["org_id"] == org_b.org_id for r in everything_b)


def test_client_ip_comes_from_forwarded_for_only_behind_a_trusted_proxy(app_with, make_org, engine):
    proxied = app_with(trusted_proxies=("10.0.0.0/8",))
    org = make_org()
    behind_proxy = proxied.test_client(client=("10.0.0.5", 1))
    direct = proxied.test_client(client=("198.51.100.7", 1))
    spoof = {"X-Forwarded-For": "203.0.113.9", **org.headers}
    one = behind_proxy.post("/patients", json={"branch_id": org.branch_id, "name": "A"}, headers=spoof).json()["data"]
    two = direct.post("/patients", json={"branch_id": org.branch_id, "name": "B"}, headers=spoof).json()["data"]
    assert audit_rows(engine, org.org_id, resource_id=one["id"])[0]["ip_address"] == "203.0.113.9"
    assert audit_rows(engine, org.org_id, resource_id=two["id"])[0]["ip_address"] == "198.51.100.7"


# --- roles ---------------------------------------------------------------------------------------

def staff_member(client, org, role="nurse"):
    return post(client, org, "/staff", {"branch_id": org.branch_id, "name": role, "role": role,
                                        "email": f"{role}-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD})


def test_roles_list_their_scopes(client, org_a):
    roles = client.get("/roles", headers=org_a.headers).json()["data"]
    by_name = {r["name"]: r for r in roles["roles"]}
    assert set(by_name) == {"admin", "doctor", "nurse", "receptionist", "accountant"}
    assert "roles:write" in by_name["admin"]["scopes"] and "roles:write" not in by_name["doctor"]["scopes"]


def test_grant_and_revoke_are_audited(client, org_a, engine):
    member = staff_member(client, org_a)
    granted = client.post(f"/staff/{member['id']}/roles", json={"role": "accountant"}, headers=org_a.headers)
    assert granted.status_code == 200 and granted.json()["data"]["roles"] == ["accountant", "nurse"]
    assert "transactions:write" in granted.json()["data"]["scopes"]
    again = client.post(f"/staff/{member['id']}/roles", json={"role": "accountant"}, headers=org_a.headers)
    assert again.json()["data"]["roles"] == ["accountant", "nurse"]
    assert client.delete(f"/staff/{member['id']}/roles/accountant", headers=org_a.headers).status_code == 204
    assert client.delete(f"/staff/{member['id']}/roles/accountant", headers=org_a.headers).status_code == 404
    assert client.get(f"/staff/{member['id']}/roles", headers=org_a.headers).json()["data"]["roles"] == ["nurse"]
    actions = [r["action"] for r in audit_rows(engine, org_a.org_id, resource_id=member["id"])]
    assert actions == ["create", "grant_role", "revoke_role"]


def test_new_roles_arrive_with_the_next_refresh(client, org_a):
    member = staff_member(client, org_a, role="receptionist")
    tokens = client.post("/auth/login", json={"email": member["email"], "password": PASSWORD}).json()["data"]
    old = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/transactions", headers=old).status_code == 403
    client.post(f"/staff/{member['id']}/roles", json={"role": "accountant"}, headers=org_a.headers)
    assert client.get("/transactions", headers=old).status_code == 403  # until the token is renewed
    fresh = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).json()["data"]
    assert client.get("/transactions", headers={"Authorization": f"Bearer {fresh['access_token']}"}).status_code == 200


def test_nobody_grants_a_scope_they_do_not_hold(client, org_a):
    from models import credentials

    member = staff_member(client, org_a)
    token = credentials.issue_access_token(staff_id=org_a.admin_id, org_id=org_a.org_id,
                                           session_id=org_a.session_id, roles=["delegate"],
                                    scopes=["roles:write", "roles:read", "patients:read", "patients:write"])
    response = client.post(f"/staff/{member['id']}/roles", json={"role": "doctor"},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403 and error_of(response)["code"] == "INSUFFICIENT_SCOPE"


def test_the_last_admin_cannot_be_removed(client, org_a):
    alone = client.delete(f"/staff/{org_a.admin_id}/roles/admin", headers=org_a.headers)
    assert alone.status_code == 409 and error_of(alone)["code"] == "CONFLICT"
    assert client.delete(f"/staff/{org_a.admin_id}", headers=org_a.headers).status_code == 409
    demoted = client.patch(f"/staff/{org_a.admin_id}", json={"role": "doctor"}, headers=org_a.headers)
    assert demoted.status_code == 409
    second = staff_member(client, org_a, role="admin")
    assert client.delete(f"/staff/{org_a.admin_id}/roles/admin", headers=org_a.headers).status_code == 204
    # The first admin's token lost the admin's scopes with the role: the second is the last admin.
    assert client.delete(f"/staff/{second['id']}/roles/admin", headers=org_a.headers).status_code == 403
    tokens = client.post("/auth/login", json={"email": second["email"], "password": PASSWORD}).json()["data"]
    last = client.delete(f"/staff/{second['id']}/roles/admin", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert last.status_code == 409 and error_of(last)["code"] == "CONFLICT"


def test_roles_of_another_organizations_staff_are_404(client, org_a, org_b):
    theirs = staff_member(client, org_b)
    assert client.get(f"/staff/{theirs['id']}/roles", headers=org_a.headers).status_code == 404
    assert client.post(f"/staff/{theirs['id']}/roles", json={"role": "nurse"}, headers=org_a.headers).status_code == 404
    assert client.delete(f"/staff/{theirs['id']}/roles/nurse", headers=org_a.headers).status_code == 404
