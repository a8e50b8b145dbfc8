"""The rules particular to some resources: staff, inventory, money, loan payments, likes."""
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import uuid

import bcrypt
import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import PASSWORD, error_of
from tests.factories import build_world, post


@pytest.fixture
def world(client, org_a):
    return build_world(org_a)


# --- staff ---------------------------------------------------------------------------------------

def new_staff(client, org, **fields):
    body = {"branch_id": org.branch_id, "name": "Sam", "email": "sam@example.com", "role": "receptionist",
            "password": PASSWORD, **fields}
    return client.post("/staff", json=body, headers=org.headers)


def test_staff_password_is_write_only_and_hashed(client, org_a, engine):
    email = f"sam-{org_a.org_id[:8]}@example.com"
    response = new_staff(client, org_a, email=email)
    assert response.status_code == 201
    member = response.json()["data"]
    assert "password" not in member and "password_hash" not in member
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM staff WHERE id = :id"), {"id": member["id"]}).scalar_one()
    assert stored != PASSWORD and bcrypt.checkpw(PASSWORD.encode(), stored.encode())
    listed = client.get("/staff", headers=org_a.headers).text
    assert "password" not in listed


def test_staff_email_is_unique_case_insensitively_within_an_organization_only(client, org_a, org_b):
    email = f"unique-{org_a.org_id[:8]}@example.com"
    assert new_staff(client, org_a, email=email).status_code == 201
    clash = new_staff(client, org_a, email=email.upper())
    assert clash.status_code == 409
    assert error_of(clash)["code"] == "CONFLICT" and error_of(clash)["field"] == "email"
    # Another organization may employ the same person: its admin learns nothing from a 409.
    assert new_staff(client, org_b, email=email.upper()).status_code == 201


def test_deleted_staff_frees_the_email(client, org_a):
    email = f"again-{org_a.org_id[:8]}@example.com"
    first = new_staff(client, org_a, email=email).json()["data"]
    assert client.delete(f"/staff/{first['id']}", headers=org_a.headers).status_code == 204
    assert new_staff(client, org_a, email=email).status_code == 201


def test_staff_role_is_granted_and_follows_changes(client, org_a):
    email = f"role-{org_a.org_id[:8]}@example.com"
    member = new_staff(client, org_a, email=email, role="accountant").json()["data"]
    login = client.post("/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    assert client.get("/transactions", headers=headers).status_code == 200
    assert client.get("/prescriptions", headers=headers).status_code == 403
    client.patch(f"/staff/{member['id']}", json={"role": "doctor"}, headers=org_a.headers)
    me = client.post("/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]
    doctor = {"Authorization": f"Bearer {me['access_token']}"}
    assert client.get("/prescriptions", headers=doctor).status_code == 200
    assert client.get("/transactions", headers=doctor).status_code == 403


def test_deleting_staff_revokes_their_sessions(client, org_a):
    email = f"gone-{org_a.org_id[:8]}@example.com"
    member = new_staff(client, org_a, email=email).json()["data"]
    tokens = client.post("/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]
    assert client.delete(f"/staff/{member['id']}", headers=org_a.headers).status_code == 204
    assert client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    assert client.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 401


def test_staff_password_can_be_changed(client, org_a):
    email = f"pw-{org_a.org_id[:8]}@example.com"
    member = new_staff(client, org_a, email=email).json()["data"]
    client.patch(f"/staff/{member['id']}", json={"password": "a brand new secret"}, headers=org_a.headers)
    assert client.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 401
    assert client.post("/auth/login", json={"email": email, "password": "a brand new secret"}).status_code == 200


# --- inventory -----------------------------------------------------------------------------------

def item_body(world, **fields):
    return {"branch_id": world.branch_id, "name": "Syringe", "sku": "SYR-1", "price": 0.5, **fields}


def test_sku_is_unique_per_organization_among_live_items(client, world):
    org = world.org
    first = post(client, org, "/inventory", item_body(world))
    clash = client.post("/inventory", json=item_body(world), headers=org.headers)
    assert clash.status_code == 409 and error_of(clash)["field"] == "sku"
    client.delete(f"/inventory/{first['id']}", headers=org.headers)
    assert client.post("/inventory", json=item_body(world), headers=org.headers).status_code == 201


def test_same_sku_in_two_organizations(client, world, org_b):
    post(client, world.org, "/inventory", item_body(world, sku="SHARED"))
    other = build_world(org_b)
    assert client.post("/inventory", json=item_body(other, sku="SHARED"), headers=org_b.headers).status_code == 201


def test_last_updated_moves_only_when_quantity_does(client, world):
    org = world.org
    item = post(client, org, "/inventory", item_body(world, sku="Q-1", quantity=5))
    renamed = client.patch(f"/inventory/{item['id']}", json={"name": "Syringe 5ml"}, headers=org.headers).json()["data"]
    assert renamed["last_updated"] == item["last_updated"]
    restocked = client.patch(f"/inventory/{item['id']}", json={"quantity": 50}, headers=org.headers).json()["data"]
    assert restocked["last_updated"] > item["last_updated"]


# --- money ---------------------------------------------------------------------------------------

def test_money_keeps_exact_decimals(client, world, engine):
    org = world.org
    base = {"patient_id": world.patient_id, "staff_id": world.admin_id, "date": "2026-11-01T00:00:00Z"}
    ids = [post(client, org, "/transactions", {**base, "amount": amount})["id"] for amount in (0.1, 0.2)]
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT sum(amount) FROM transaction WHERE id = ANY(CAST(:ids AS uuid[]))"),
                             {"ids": ids}).scalar_one()
    assert total == Decimal("0.30")
    big = post(client, org, "/transactions", {**base, "amount": 9999999999.99})
    assert big["amount"] == 9999999999.99
    for bad in (0.001, -1, 10000000000):
        response = client.post("/transactions", json={**base, "amount": bad}, headers=org.headers)
        assert response.status_code == 400 and error_of(response)["field"] == "amount", bad


def test_negative_quantities_and_prices_are_refused(client, world):
    for field, value in (("quantity", -1), ("price", -0.01), ("reorder_point", -5)):
        response = client.post("/inventory", json=item_body(world, **{field: value}), headers=world.org.headers)
        assert response.status_code == 400 and error_of(response)["field"] == field


# --- loans and payments -------------------------------------------------------------------------

def new_loan(client, org, **fields):
    return post(client, org, "/loans", {"lender": "Bank", "original_amount": 1200, "interest_rate": 12,
                                        "start_date": "2026-01-01T00:00:00Z", **fields})


def test_payment_lowers_the_balance_and_splits_interest(client, world):
    org = world.org
    loan = new_loan(client, org)
    assert loan["remaining_balance"] == 1200
    response = client.post(f"/loans/{loan['id']}/payments", json={"amount": 112}, headers=org.headers)
    assert response.status_code == 201
    payment = response.json()["data"]
    assert payment["interest"] == 12.0 and payment["principal"] == 100.0  # 12%/12 of 1200
    after = client.get(f"/loans/{loan['id']}?embed=payments", headers=org.headers).json()["data"]
    assert after["remaining_balance"] == 1088 and [p["id"] for p in after["payments"]] == [payment["id"]]
    listed = client.get(f"/loans/{loan['id']}/payments", headers=org.headers).json()["data"]
    assert listed["total"] == 1 and listed["payments"][0] == payment


def test_payment_above_the_balance_is_refused_and_zero_means_paid_off(client, world):
    org = world.org
    loan = new_loan(client, org, original_amount=100)
    too_much = client.post(f"/loans/{loan['id']}/payments", json={"amount": 100.01}, headers=org.headers)
    assert too_much.status_code == 422 and error_of(too_much)["code"] == "BUSINESS_RULE_VIOLATION"
    client.post(f"/loans/{loan['id']}/payments", json={"amount": 60, "principal": 60, "interest": 0}, headers=org.headers)
    last = client.post(f"/loans/{loan['id']}/payments", json={"amount": 40}, headers=org.headers).json()["data"]
    paid = client.get(f"/loans/{loan['id']}", headers=org.headers).json()["data"]
    assert paid["remaining_balance"] == 0 and paid["status"] == "paid_off"
    client.delete(f"/loans/{loan['id']}/payments/{last['id']}", headers=org.headers)
    reopened = client.get(f"/loans/{loan['id']}", headers=org.headers).json()["data"]
    assert reopened["remaining_balance"] == 40 and reopened["status"] == "current"


def test_correcting_a_payment_moves_the_balance_by_the_difference(client, world):
    org = world.org
    loan = new_loan(client, org, interest_rate=0)
    payment = client.post(f"/loans/{loan['id']}/payments", json={"amount": 200}, headers=org.headers).json()["data"]
    fixed = client.patch(f"/loans/{loan['id']}/payments/{payment['id']}", json={"amount": 150}, headers=org.headers)
    assert fixed.status_code == 200 and fixed.json()["data"]["principal"] == 150
    assert client.get(f"/loans/{loan['id']}", headers=org.headers).json()["data"]["remaining_balance"] == 1050
    bad_split = client.patch(f"/loans/{loan['id']}/payments/{payment['id']}",
                             json={"principal": 100, "interest": 10}, headers=org.headers)
    assert bad_split.status_code == 422


def test_payments_of_a_missing_or_foreign_loan_are_404(client, world, org_b):
    theirs = new_loan(client, org_b)
    for url in (f"/loans/{theirs['id']}/payments",):
        assert client.get(url, headers=world.org.headers).status_code == 404
        assert client.post(url, json={"amount": 1}, headers=world.org.headers).status_code == 404
    mine = new_loan(client, world.org)
    payment = client.post(f"/loans/{mine['id']}/payments", json={"amount": 1}, headers=world.org.headers).json()["data"]
    # A payment is only found under its own loan.
    assert client.get(f"/loans/{theirs['id']}/payments/{payment['id']}", headers=org_b.headers).status_code == 404
    other_loan = new_loan(client, world.org)
    assert client.get(f"/loans/{other_loan['id']}/payments/{payment['id']}", headers=world.org.headers).status_code == 404


def test_remaining_balance_cannot_exceed_the_original(client, world):
    response = client.post("/loans", json={"lender": "B", "original_amount": 10, "remaining_balance": 11,
                                           "start_date": "2026-01-01T00:00:00Z"}, headers=world.org.headers)
    assert response.status_code == 422 and error_of(response)["field"] == "remaining_balance"


def test_twenty_concurrent_payments_lose_no_update(live_server, world):
    org = world.org
    with httpx.Client(base_url=live_server, headers=org.headers, timeout=30) as http:
        loan = http.post("/loans", json={"lender": "Bank", "original_amount": 1000, "interest_rate": 0,
                                         "start_date": "2026-01-01T00:00:00Z"}).json()["data"]
        amounts = [Decimal("47.13") + i for i in range(20)]  # sums to more than the balance

        def pay(amount):
            return http.post(f"/loans/{loan['id']}/payments", json={"amount": float(amount)})

        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(pay, amounts))
        accepted = [a for a, r in zip(amounts, responses) if r.status_code == 201]
        refused = [r for r in responses if r.status_code != 201]
        assert all(r.status_code == 422 for r in refused), [r.text for r in refused]
        assert accepted and refused
        final = http.get(f"/loans/{loan['id']}").json()["data"]
        assert Decimal(str(final["remaining_balance"])) == Decimal(1000) - sum(accepted)
        assert http.get(f"/loans/{loan['id']}/payments").json()["data"]["total"] == len(accepted)


# --- loans: only payments and the loan's actions move the balance and the status ----------------

def test_a_patch_cannot_clear_a_loan_or_mark_it_paid_off(client, world):
    org = world.org
    loan = new_loan(client, org, original_amount=1000)
    for body in ({"remaining_balance": 0}, {"status": "paid_off"}):
        response = client.patch(f"/loans/{loan['id']}", json=body, headers=org.headers)
        assert response.status_code == 400, response.text
    created = client.post("/loans", json={"lender": "B", "original_amount": 10, "status": "paid_off",
                                          "start_date": "2026-01-01T00:00:00Z"}, headers=org.headers)
    assert created.status_code == 400
    shrunk = client.patch(f"/loans/{loan['id']}", json={"original_amount": 999}, headers=org.headers)
    assert shrunk.status_code == 422 and error_of(shrunk)["field"] == "remaining_balance"
    kept = client.get(f"/loans/{loan['id']}", headers=org.headers).json()["data"]
    assert kept["remaining_balance"] == 1000 and kept["status"] == "current"


def test_the_database_refuses_a_settled_status_with_a_balance(engine, world, client):
    loan = new_loan(client, world.org)
    with pytest.raises(sa.exc.IntegrityError, match="loan_settled_check"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE loan SET status = 'paid_off' WHERE id = :id"), {"id": loan["id"]})


def test_write_off_is_an_action_with_its_own_audit_row(client, world):
    org = world.org
    loan = new_loan(client, org, original_amount=500, interest_rate=0)
    client.post(f"/loans/{loan['id']}/payments", json={"amount": 100}, headers=org.headers)
    written = client.post(f"/loans/{loan['id']}/write-off", headers=org.headers)
    assert written.status_code == 200, written.text
    assert written.json()["data"]["remaining_balance"] == 0 and written.json()["data"]["status"] == "written_off"
    rows = client.get(f"/audit-logs?resourceId={loan['id']}&action=write_off", headers=org.headers).json()["data"]
    assert rows["total"] == 1
    assert rows["audit_logs"][0]["before"]["remaining_balance"] == 400
    assert rows["audit_logs"][0]["after"]["status"] == "written_off"
    again = client.post(f"/loans/{loan['id']}/write-off", headers=org.headers)
    assert again.status_code == 422 and error_of(again)["code"] == "BUSINESS_RULE_VIOLATION"
    refused = client.post(f"/loans/{loan['id']}/payments", json={"amount": 1}, headers=org.headers)
    assert refused.status_code == 422
    payment_id = client.get(f"/loans/{loan['id']}/payments", headers=org.headers).json()["data"]["payments"][0]["id"]
    assert client.delete(f"/loans/{loan['id']}/payments/{payment_id}", headers=org.headers).status_code == 422


def test_standing_moves_only_while_something_is_owed(client, world):
    org = world.org
    loan = new_loan(client, org, original_amount=50, interest_rate=0)
    late = client.post(f"/loans/{loan['id']}/standing", json={"status": "late"}, headers=org.headers)
    assert late.status_code == 200 and late.json()["data"]["status"] == "late"
    audited = client.get(f"/audit-logs?resourceId={loan['id']}&action=change_standing", headers=org.headers)
    assert audited.json()["data"]["total"] == 1
    client.post(f"/loans/{loan['id']}/payments", json={"amount": 50}, headers=org.headers)
    assert client.get(f"/loans/{loan['id']}", headers=org.headers).json()["data"]["status"] == "paid_off"
    final = client.post(f"/loans/{loan['id']}/standing", json={"status": "current"}, headers=org.headers)
    assert final.status_code == 422
    bad = client.post(f"/loans/{loan['id']}/standing", json={"status": "paid_off"}, headers=org.headers)
    assert bad.status_code == 400


# --- who may be named on a record ----------------------------------------------------------------

def member(client, org, role):
    """A new staff member of ``role`` and their auth headers."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    created = new_staff(client, org, email=email, role=role)
    assert created.status_code == 201, created.text
    tokens = client.post("/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]
    return created.json()["data"], {"Authorization": f"Bearer {tokens['access_token']}"}


def test_a_prescriber_must_hold_prescriptions_write(client, world):
    org = world.org
    receptionist, _ = member(client, org, "receptionist")
    _, doctor_headers = member(client, org, "doctor")
    body = {"patient_id": world.patient_id, "type": "glasses", "data": {}, "date": "2026-11-01T10:00:00Z"}
    refused = client.post("/prescriptions", json={**body, "staff_id": receptionist["id"]}, headers=doctor_headers)
    assert refused.status_code == 422 and error_of(refused)["field"] == "staff_id"
    assert "prescriptions:write" in error_of(refused)["message"]
    colleague = client.post("/prescriptions", json={**body, "staff_id": world.staff_id}, headers=doctor_headers)
    assert colleague.status_code == 201
    moved = client.patch(f"/prescriptions/{colleague.json()['data']['id']}", json={"staff_id": receptionist["id"]},
                         headers=org.headers)
    assert moved.status_code == 422
    client.post(f"/staff/{receptionist['id']}/roles", json={"role": "doctor"}, headers=org.headers)
    assert client.post("/prescriptions", json={**body, "staff_id": receptionist["id"]}, headers=org.headers).status_code == 201


def test_a_transaction_is_recorded_by_a_member_holding_transactions_write(client, world):
    org = world.org
    body = {"patient_id": world.patient_id, "amount": 10, "date": "2026-11-01T10:00:00Z"}
    refused = client.post("/transactions", json={**body, "staff_id": world.staff_id}, headers=org.headers)
    assert refused.status_code == 422 and error_of(refused)["field"] == "staff_id"
    accountant, _ = member(client, org, "accountant")
    assert client.post("/transactions", json={**body, "staff_id": accountant["id"]}, headers=org.headers).status_code == 201


# --- staff roles ---------------------------------------------------------------------------------

def test_a_staff_record_lists_every_role_held_and_role_filters_on_them(client, org_a):
    receptionist, _ = member(client, org_a, "receptionist")
    assert receptionist["roles"] == ["receptionist"]
    before = client.get(f"/staff/{receptionist['id']}", headers=org_a.headers).headers["ETag"]
    granted = client.post(f"/staff/{receptionist['id']}/roles", json={"role": "admin"}, headers=org_a.headers)
    assert granted.status_code == 200
    record = client.get(f"/staff/{receptionist['id']}", headers=org_a.headers)
    assert record.json()["data"]["roles"] == ["admin", "receptionist"]
    assert record.headers["ETag"] != before  # a grant changes the record
    admins = [row["id"] for row in client.get("/staff?role=admin", headers=org_a.headers).json()["data"]["staff"]]
    assert set(admins) == {org_a.admin_id, receptionist["id"]}
    changed = client.patch(f"/staff/{receptionist['id']}", json={"role": "nurse"}, headers=org_a.headers)
    assert changed.json()["data"]["roles"] == ["admin", "nurse"]
    client.delete(f"/staff/{receptionist['id']}/roles/admin", headers=org_a.headers)
    assert client.get(f"/staff/{receptionist['id']}", headers=org_a.headers).json()["data"]["roles"] == ["nurse"]
    receptionists = client.get("/staff?role=receptionist", headers=org_a.headers).json()["data"]["staff"]
    assert receptionist["id"] not in [row["id"] for row in receptionists]


# --- community -----------------------------------------------------------------------------------

def test_the_author_is_the_caller_and_only_the_author_or_an_admin_changes_a_post(client, world):
    org = world.org
    _, doctor = member(client, org, "doctor")
    receptionist, front_desk = member(client, org, "receptionist")
    post_by_doctor = client.post("/community/posts", json={"title": "Rota", "content": "Mon"}, headers=doctor)
    assert post_by_doctor.status_code == 201
    posted = post_by_doctor.json()["data"]
    impersonating = client.post("/community/posts", json={"title": "x", "content": "y", "staff_id": posted["staff_id"]},
                                headers=front_desk)
    assert impersonating.status_code == 400
    for response in (client.patch(f"/community/posts/{posted['id']}", json={"title": "Mine"}, headers=front_desk),
                     client.delete(f"/community/posts/{posted['id']}", headers=front_desk)):
        assert response.status_code == 403 and error_of(response)["code"] == "NOT_AUTHOR"
    assert client.patch(f"/community/posts/{posted['id']}", json={"title": "Rota v2"}, headers=doctor).status_code == 200
    own = client.post("/community/posts", json={"title": "Hi", "content": "All"}, headers=front_desk).json()["data"]
    assert own["staff_id"] == receptionist["id"]
    assert client.delete(f"/community/posts/{posted['id']}", headers=org.headers).status_code == 204  # an admin


def test_likes_are_one_per_member_and_can_be_taken_back(live_server, world, client):
    org = world.org
    _, nurse = member(client, org, "nurse")
    with httpx.Client(base_url=live_server, headers=org.headers, timeout=30) as http:
        created = http.post("/community/posts", json={"title": "Hi", "content": "All"}).json()["data"]
        assert created["staff_id"] == org.admin_id and created["likes"] == 0
        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(lambda _: http.post(f"/community/posts/{created['id']}/like").status_code, range(10)))
        assert statuses == [200] * 10
        assert http.get(f"/community/posts/{created['id']}").json()["data"]["likes"] == 1
        assert http.post(f"/community/posts/{created['id']}/like", headers=nurse).json()["data"]["likes"] == 2
        assert http.delete(f"/community/posts/{created['id']}/like").json()["data"]["likes"] == 1
        assert http.delete(f"/community/posts/{created['id']}/like").json()["data"]["likes"] == 1
        assert http.post(f"/community/posts/{created['id']}/like", headers={"Authorization": "Bearer x"}).status_code == 401
