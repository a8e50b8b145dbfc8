"""The CRUD engine below HTTP: a Caller and a descriptor, no request, no framework."""
import pytest

from errors import ApiError
from models import accounts, crud
from models.tenancy import Caller
from tests.conftest import PASSWORD


@pytest.fixture
def organizations(app):
    made = []
    for name in ("Engine A", "Engine B"):
        ids = accounts.create_organization(name=name, branch_name="Main", admin_email=f"{name.replace(' ', '')}-{id(made)}@example.com",
                                           admin_password=PASSWORD)
        made.append((Caller(user_id=ids["admin_id"], org_id=ids["org_id"], scopes=frozenset()), ids))
    return made


def test_create_read_change_and_delete_through_the_engine(app, organizations):
    patients = app.state.resources["patient"]
    (caller, ids), _ = organizations
    row = crud.create_row(patients, caller, {"branch_id": ids["branch_id"], "name": "Below HTTP"})
    assert crud.get_row(patients, caller, row["id"])["name"] == "Below HTTP"
    changed = crud.update_row(patients, caller, row["id"], {"phone": "555 0100"})
    assert changed["phone"] == "555 0100" and changed["updated_at"] >= row["updated_at"]
    listed = crud.list_rows(patients, caller, filters={"search": "below http"})
    assert [p["id"] for p in listed["patients"]] == [row["id"]] and listed["total"] == 1
    crud.delete_row(patients, caller, row["id"])
    with pytest.raises(ApiError) as gone:
        crud.get_row(patients, caller, row["id"])
    assert gone.value.code == "NOT_FOUND"


def test_another_organizations_row_is_not_found_and_cannot_be_referenced(app, organizations):
    patients = app.state.resources["patient"]
    (mine, my_ids), (theirs, their_ids) = organizations
    row = crud.create_row(patients, mine, {"branch_id": my_ids["branch_id"], "name": "Mine"})
    with pytest.raises(ApiError) as hidden:
        crud.get_row(patients, theirs, row["id"])
    assert hidden.value.code == "NOT_FOUND"
    with pytest.raises(ApiError) as refused:
        crud.create_row(patients, theirs, {"branch_id": my_ids["branch_id"], "name": "Theirs"})
    assert (refused.value.code, refused.value.field) == ("INVALID_REFERENCE", "branch_id")


def test_a_precondition_sees_the_locked_row_and_can_refuse_the_change(app, organizations):
    patients = app.state.resources["patient"]
    (caller, ids), _ = organizations
    row = crud.create_row(patients, caller, {"branch_id": ids["branch_id"], "name": "Guarded"})
    seen = []

    def refuse(locked):
        seen.append(locked["name"])
        raise ApiError("PRECONDITION_FAILED")

    with pytest.raises(ApiError):
        crud.update_row(patients, caller, row["id"], {"name": "Changed"}, expect=refuse)
    assert seen == ["Guarded"] and crud.get_row(patients, caller, row["id"])["name"] == "Guarded"
