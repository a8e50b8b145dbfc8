"""Patients end to end: CRUD, filters, search, pagination, embed, isolation between organizations."""
import uuid

import pytest
import sqlalchemy as sa

from tests.conftest import error_of
from tests.factories import statements_sent


def create_patient(client, org, **fields):
    body = {"branch_id": org.branch_id, "name": "Ada Lovelace", **fields}
    response = client.post("/patients", json=body, headers=org.headers)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def test_create_returns_the_stored_patient(client, org_a):
    patient = create_patient(client, org_a, email="ada@example.com", phone="+44 20 1234",
                             date_of_birth="1815-12-10", gender="female")
    assert patient["org_id"] == org_a.org_id
    assert patient["status"] == "active"
    assert patient["date_of_birth"] == "1815-12-10"
    assert patient["created_at"].endswith("+00:00")
    fetched = client.get(f"/patients/{patient['id']}", headers=org_a.headers).json()["data"]
    assert fetched == patient


def test_patch_changes_only_the_fields_sent_and_moves_updated_at(client, org_a):
    patient = create_patient(client, org_a, email="a@example.com")
    response = client.patch(f"/patients/{patient['id']}", json={"phone": "555"}, headers=org_a.headers)
    assert response.status_code == 200
    updated = response.json()["data"]
    assert updated["phone"] == "555"
    assert updated["email"] == "a@example.com"
    assert updated["updated_at"] > patient["updated_at"]


def test_delete_is_soft_and_answers_204_once(client, org_a, engine):

    patient = create_patient(client, org_a)
    assert client.delete(f"/patients/{patient['id']}", headers=org_a.headers).status_code == 204
    again = client.delete(f"/patients/{patient['id']}", headers=org_a.headers)
    assert again.status_code == 404 and error_of(again)["code"] == "NOT_FOUND"
    assert client.get(f"/patients/{patient['id']}", headers=org_a.headers).status_code == 404
    listed = client.get("/patients", headers=org_a.headers).json()["data"]
    assert patient["id"] not in [p["id"] for p in listed["patients"]]
    with engine.connect() as conn:
        deleted_at = conn.execute(sa.text("SELECT deleted_at FROM patient WHERE id = :id"),
                                  {"id": patient["id"]}).scalar_one()
    assert deleted_at is not None


def test_list_pages_are_newest_first_with_total(client, org_a):
    ids = [create_patient(client, org_a, name=f"P{i}")["id"] for i in range(5)]
    page1 = client.get("/patients?page=1&pageSize=2", headers=org_a.headers).json()["data"]
    page3 = client.get("/patients?page=3&pageSize=2", headers=org_a.headers).json()["data"]
    assert page1["total"] == 5 and page3["total"] == 5
    assert [p["id"] for p in page1["patients"]] == ids[::-1][:2]
    assert [p["id"] for p in page3["patients"]] == ids[::-1][4:]
    beyond = client.get("/patients?page=9&pageSize=2", headers=org_a.headers).json()["data"]
    assert beyond == {"patients": [], "total": 5, "total_estimated": False}


def test_search_matches_name_email_or_phone_case_insensitively(client, org_a):
    grace = create_patient(client, org_a, name="Grace Hopper", email="grace@navy.mil", phone="111")
    create_patient(client, org_a, name="Alan Turing", email="alan@bletchley.uk", phone="222")
    for term in ("hopper", "NAVY", "111", "ace h"):
        found = client.get("/patients", params={"search": term}, headers=org_a.headers).json()["data"]
        assert [p["id"] for p in found["patients"]] == [grace["id"]], term
        assert found["total"] == 1
    wildcard = client.get("/patients", params={"search": "%"}, headers=org_a.headers).json()["data"]
    assert wildcard["total"] == 0


def test_search_folds_non_ascii_case_and_follows_edits(client, org_a):
    # search_text is lower-cased by PostgreSQL (sql/0019): this holds ILIKE's behaviour to it.
    emile = create_patient(client, org_a, name="Émile Zoë Ångström")
    for term in ("émile", "ZOË", "ångSTRÖM"):
        found = client.get("/patients", params={"search": term}, headers=org_a.headers).json()["data"]
        assert [p["id"] for p in found["patients"]] == [emile["id"]], term
    client.patch(f"/patients/{emile['id']}", json={"name": "Renamed"}, headers=org_a.headers)
    stale = client.get("/patients", params={"search": "émile"}, headers=org_a.headers).json()["data"]
    fresh = client.get("/patients", params={"search": "renamed"}, headers=org_a.headers).json()["data"]
    assert stale["total"] == 0 and [p["id"] for p in fresh["patients"]] == [emile["id"]]


def test_the_search_column_never_leaves_the_server(client, org_a):
    patient = create_patient(client, org_a)
    got = client.get(f"/patients/{patient['id']}", headers=org_a.headers).json()["data"]
    listed = client.get("/patients", headers=org_a.headers).json()["data"]["patients"]
    assert "search_text" not in patient and "search_text" not in got and "search_text" not in listed[0]
    written = client.post("/patients", json={"branch_id": org_a.branch_id, "name": "X", "search_text": "y"},
                          headers=org_a.headers)
    assert written.status_code == 400 and error_of(written)["field"] == "search_text"


def test_status_and_branch_filters(client, org_a):
    active = create_patient(client, org_a)
    inactive = create_patient(client, org_a, status="inactive")
    found = client.get("/patients?status=inactive", headers=org_a.headers).json()["data"]
    assert [p["id"] for p in found["patients"]] == [inactive["id"]]
    by_branch = client.get(f"/patients?branchId={org_a.branch_id}", headers=org_a.headers).json()["data"]
    assert {p["id"] for p in by_branch["patients"]} == {active["id"], inactive["id"]}
    bad = client.get("/patients?status=sleeping", headers=org_a.headers)
    assert bad.status_code == 400 and error_of(bad)["field"] == "status"


def test_embed_branch(client, org_a):
    patient = create_patient(client, org_a)
    got = client.get(f"/patients/{patient['id']}?embed=branch", headers=org_a.headers).json()["data"]
    assert got["branch"]["id"] == org_a.branch_id and got["branch"]["name"] == "Main"
    listed = client.get("/patients?embed=branch", headers=org_a.headers).json()["data"]["patients"]
    assert listed[0]["branch"]["id"] == org_a.branch_id
    plain = client.get(f"/patients/{patient['id']}", headers=org_a.headers).json()["data"]
    assert "branch" not in plain
    unknown = client.get("/patients?embed=staff", headers=org_a.headers)
    assert unknown.status_code == 400 and error_of(unknown)["field"] == "embed"


def test_embedded_branch_that_was_deleted_is_null(client, org_a, engine):

    patient = create_patient(client, org_a)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE branch SET deleted_at = now() WHERE id = :id"), {"id": org_a.branch_id})
    got = client.get(f"/patients/{patient['id']}?embed=branch", headers=org_a.headers).json()["data"]
    assert got["branch"] is None


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_other_organizations_patient_is_a_404_like_a_random_id(client, org_a, org_b, method):
    theirs = create_patient(client, org_b)
    kwargs = {"json": {"name": "Mallory"}} if method == "patch" else {}
    cross = getattr(client, method)(f"/patients/{theirs['id']}", headers=org_a.headers, **kwargs)
    random = getattr(client, method)(f"/patients/{uuid.uuid4()}", headers=org_a.headers, **kwargs)
    assert cross.status_code == random.status_code == 404
    assert error_of(cross) == error_of(random)
    unchanged = client.get(f"/patients/{theirs['id']}", headers=org_b.headers).json()["data"]
    assert unchanged == theirs


def test_lists_and_totals_never_include_another_organization(client, org_a, org_b):
    create_patient(client, org_a, name="Mine")
    create_patient(client, org_b, name="Theirs")
    mine = client.get("/patients?search=Theirs", headers=org_a.headers).json()["data"]
    assert mine == {"patients": [], "total": 0, "total_estimated": False}
    everything = client.get("/patients", headers=org_a.headers).json()["data"]
    assert everything["total"] == 1 and everything["patients"][0]["name"] == "Mine"


def test_org_id_in_body_or_query_must_be_the_callers(client, org_a, org_b):
    body = {"org_id": org_b.org_id, "branch_id": org_a.branch_id, "name": "X"}
    refused = client.post("/patients", json=body, headers=org_a.headers)
    assert refused.status_code == 403 and error_of(refused)["code"] == "ORG_MISMATCH"
    same = client.post("/patients", json={**body, "org_id": org_a.org_id}, headers=org_a.headers)
    assert same.status_code == 201
    query = client.get(f"/patients?orgId={org_b.org_id}", headers=org_a.headers)
    assert query.status_code == 403 and error_of(query)["code"] == "ORG_MISMATCH"
    assert client.get(f"/patients?orgId={org_a.org_id}", headers=org_a.headers).status_code == 200


def test_branch_of_another_organization_is_an_invalid_reference(client, org_a, org_b):
    body = {"branch_id": org_b.branch_id, "name": "X"}
    response = client.post("/patients", json=body, headers=org_a.headers)
    assert response.status_code == 422
    assert error_of(response) | {"message": ""} == {"code": "INVALID_REFERENCE", "field": "branch_id", "message": ""}
    patient = create_patient(client, org_a)
    moved = client.patch(f"/patients/{patient['id']}", json={"branch_id": org_b.branch_id}, headers=org_a.headers)
    assert moved.status_code == 422 and error_of(moved)["field"] == "branch_id"


def test_create_is_one_statement_with_its_branch_check_and_audit_row(client, org_a, make_org, engine):
    """No probe and no second INSERT: one statement checks the branch, inserts the patient and
    writes its audit row; a branch that is missing, deleted or another organization's refuses the
    whole create."""
    from models import database

    sent = statements_sent(database.current_pools().writer, lambda: create_patient(client, org_a, name="One Statement"))
    statements = [" ".join(statement.lower().split()) for statement, _ in sent]
    assert len(statements) == 1 and statements[0].startswith("with found as")
    assert "from branch where branch.id = " in statements[0] and "insert into audit_log" in statements[0]

    other = make_org()
    deleted = client.post("/branches", json={"name": "Closed"}, headers=org_a.headers).json()["data"]
    assert client.delete(f"/branches/{deleted['id']}", headers=org_a.headers).status_code == 204
    with engine.connect() as conn:
        audits = conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE org_id = :org"),
                              {"org": org_a.org_id}).scalar_one()
    for branch_id in (str(uuid.uuid4()), deleted["id"], other.branch_id):
        body = {"branch_id": branch_id, "name": "Refused Reference"}
        refused = client.post("/patients", json=body, headers=org_a.headers)
        assert refused.status_code == 422, refused.text
        assert error_of(refused)["code"] == "INVALID_REFERENCE" and error_of(refused)["field"] == "branch_id"
    found = client.get("/patients?search=refused reference", headers=org_a.headers).json()["data"]
    assert found["total"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE org_id = :org"),
                            {"org": org_a.org_id}).scalar_one() == audits


def test_the_same_fields_in_another_order_reuse_one_audited_insert(app, client, org_a):
    """The client orders the body's fields; the statements kept for audited inserts must not grow
    with the orderings of one set of fields."""
    patients = app.state.resources["patient"]
    fields = {"email": "order@example.com", "phone": "555 0101", "gender": "other"}
    create_patient(client, org_a, **fields)
    kept = len(patients.statements)
    body = {"gender": "other", "phone": "555 0102", "name": "Reordered", "email": "order2@example.com",
            "branch_id": org_a.branch_id}
    assert client.post("/patients", json=body, headers=org_a.headers).status_code == 201
    assert len(patients.statements) == kept


def test_body_validation_names_the_field(client, org_a):
    cases = [
        ({"name": "X"}, "branch_id"),
        ({"branch_id": org_a.branch_id, "name": ""}, "name"),
        ({"branch_id": org_a.branch_id, "name": "X" * 101}, "name"),
        ({"branch_id": org_a.branch_id, "name": "X", "email": "not-an-email"}, "email"),
        ({"branch_id": org_a.branch_id, "name": "X", "date_of_birth": "yesterday"}, "date_of_birth"),
        ({"branch_id": org_a.branch_id, "name": "X", "id": str(uuid.uuid4())}, "id"),
        ({"branch_id": org_a.branch_id, "name": "X", "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ({"branch_id": "nope", "name": "X"}, "branch_id"),
    ]
    for body, field in cases:
        response = client.post("/patients", json=body, headers=org_a.headers)
        assert response.status_code == 400, (body, response.text)
        assert error_of(response)["code"] == "VALIDATION_ERROR"
        assert error_of(response)["field"] == field, body


def test_deleted_branch_cannot_be_referenced(client, org_a, engine):

    with engine.begin() as conn:
        other = conn.execute(sa.text("INSERT INTO branch (org_id, name, deleted_at) VALUES (:o, 'Old', now()) RETURNING id"),
                             {"o": org_a.org_id}).scalar_one()
    response = client.post("/patients", json={"branch_id": str(other), "name": "X"}, headers=org_a.headers)
    assert response.status_code == 422 and error_of(response)["field"] == "branch_id"


def test_writes_need_the_write_scope(client, org_a, engine):
    from models import credentials

    token = credentials.issue_access_token(staff_id=org_a.admin_id, org_id=org_a.org_id,
                                           session_id=org_a.session_id, roles=["reader"],
                                    scopes=["patients:read"])
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/patients", headers=headers).status_code == 200
    response = client.post("/patients", json={"branch_id": org_a.branch_id, "name": "X"}, headers=headers)
    assert response.status_code == 403 and error_of(response)["code"] == "INSUFFICIENT_SCOPE"


def test_totals_are_exact_up_to_the_limit_then_estimated(app_with, make_org):
    limited = app_with(count_exact_limit=3)
    org = make_org()
    client = limited.test_client()
    for i in range(3):
        client.post("/patients", json={"branch_id": org.branch_id, "name": f"P{i}"}, headers=org.headers)
    exact = client.get("/patients", headers=org.headers).json()["data"]
    assert exact["total"] == 3 and exact["total_estimated"] is False
    client.post("/patients", json={"branch_id": org.branch_id, "name": "P3"}, headers=org.headers)
    estimated = client.get("/patients?pageSize=2", headers=org.headers).json()["data"]
    assert estimated["total_estimated"] is True and estimated["total"] >= 4
    assert len(estimated["patients"]) == 2


def test_search_pages_and_totals_past_the_exact_limit(app_with, make_org):
    limited = app_with(search_count_exact_limit=3)
    org = make_org()
    client = limited.test_client()
    ids = [client.post("/patients", json={"branch_id": org.branch_id, "name": f"Searchable {i}"},
                       headers=org.headers).json()["data"]["id"] for i in range(5)]
    few = client.get("/patients?search=Searchable 1", headers=org.headers).json()["data"]
    assert few["total"] == 1 and few["total_estimated"] is False
    many = client.get("/patients?search=searchable&pageSize=2&page=2", headers=org.headers).json()["data"]
    assert many["total_estimated"] is True and [p["id"] for p in many["patients"]] == ids[::-1][2:4]
    # The list's own limit does not apply to searches, and the search limit not to plain lists.
    assert client.get("/patients", headers=org.headers).json()["data"]["total_estimated"] is False
    exact = app_with(count_exact_limit=3, search_count_exact_limit=100).test_client()
    page = exact.get("/patients?search=searchable&pageSize=2&page=3", headers=org.headers).json()["data"]
    assert page["total"] == 5 and [p["id"] for p in page["patients"]] == [ids[0]]
    beyond = exact.get("/patients?search=searchable&pageSize=2&page=9", headers=org.headers).json()["data"]
    assert beyond["total"] == 5 and beyond["patients"] == []


def test_a_search_over_the_limit_is_counted_once(app_with, make_org):
    """The probe that finds more matches than the limit has counted them; only the estimate is
    asked of the database after it, not a second count."""
    custom = app_with(search_count_exact_limit=2)
    client = custom.test_client()
    org = make_org()
    for i in range(4):
        client.post("/patients", json={"branch_id": org.branch_id, "name": f"Countonce {i}"}, headers=org.headers)
    found = {}

    def search():
        found.update(client.get("/patients?search=countonce&pageSize=2", headers=org.headers).json()["data"])
    # Patient reads write access rows: on the primary.
    statements = [statement.lower() for statement, _ in statements_sent(custom.state.pools.writer, search)]
    assert found["total_estimated"] is True and len(found["patients"]) == 2
    assert len([s for s in statements if "count(" in s]) == 1


def _reader(client, org):
    """read(path) -> (the answer's data, the statements it sent, lower-cased)."""
    from models import database

    primary = database.current_pools().writer  # patient reads write access rows: on the primary

    def read(path):
        answers = []
        statements = [s.lower() for s, _ in statements_sent(primary, lambda: answers.append(
            client.get(path, headers=org.headers).json()["data"]))]
        return answers[0], statements
    return read


def test_a_list_under_the_limit_is_one_statement_with_its_count_and_access_row(client, org_a):
    """The page counts its matches and writes its access row in the statement that reads it;
    only a page past the last one asks for the count by itself."""
    for i in range(3):
        create_patient(client, org_a, name=f"Counted {i}")
    read = _reader(client, org_a)
    page, statements = read("/patients?pageSize=2")
    assert len(statements) == 1 and "count(" in statements[0] and "insert into access_log" in statements[0]
    beyond, beyond_statements = read("/patients?pageSize=2&page=5")
    assert page["total"] == 3 and page["total_estimated"] is False and len(page["patients"]) == 2
    assert beyond == {"patients": [], "total": 3, "total_estimated": False}
    assert len(statements + beyond_statements) == 3  # the empty page, then its count


def test_a_search_is_one_statement_with_its_count_and_access_row(client, org_a, engine):
    """A search under its exact limit counts its matches, reads the page and writes the page's
    access row in one statement; a search that finds nothing writes no access row."""
    ids = [create_patient(client, org_a, name=f"Onestatement {i}")["id"] for i in range(3)]
    read = _reader(client, org_a)
    page, statements = read("/patients?search=onestatement&pageSize=2")
    assert len(statements) == 1 and "count(" in statements[0] and "insert into access_log" in statements[0]
    assert page["total"] == 3 and page["total_estimated"] is False
    assert [p["id"] for p in page["patients"]] == ids[::-1][:2]
    last, _ = read("/patients?search=onestatement&pageSize=2&page=2")
    assert [p["id"] for p in last["patients"]] == ids[:1] and last["total"] == 3

    def access_rows():
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM access_log WHERE org_id = :org"),
                                {"org": org_a.org_id}).scalar_one()
    before = access_rows()
    nothing, statements = read("/patients?search=nobodyiscalledthis")
    assert nothing == {"patients": [], "total": 0, "total_estimated": False} and len(statements) == 1
    assert access_rows() == before
