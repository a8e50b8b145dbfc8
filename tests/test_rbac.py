"""RBAC: every operation of the spec, called by every role, is allowed or refused as the matrix says."""
import re
import uuid

import pytest
import yaml

from config import ROOT
from tests.conftest import PASSWORD, error_of

ROLES = ["admin", "doctor", "nurse", "receptionist", "accountant"]
MATRIX = yaml.safe_load((ROOT / "tests" / "rbac_matrix.yaml").read_text())
SPEC = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())
OPERATIONS = [(path, method, op["operationId"]) for path, item in SPEC["paths"].items()
              for method, op in item.items() if isinstance(op, dict) and "operationId" in op]


def test_every_operation_has_an_expectation():
    assert sorted(op for _, _, op in OPERATIONS) == sorted(MATRIX)


@pytest.fixture(scope="module")
def tokens(client):
    """One organization with a logged-in staff member of every role."""
    from models import accounts

    admin_email = f"rbac-{uuid.uuid4().hex[:8]}@example.com"
    ids = accounts.create_organization(name="RBAC", branch_name="Main", admin_email=admin_email,
                                       admin_password=PASSWORD)

    def login(email):
        return client.post("/auth/login", json={"email": email, "password": PASSWORD}).json()["data"]["access_token"]

    result = {"admin": login(admin_email)}
    for role in ROLES[1:]:
        email = f"rbac-{role}-{uuid.uuid4().hex[:8]}@example.com"
        created = client.post("/staff", json={"branch_id": ids["branch_id"], "name": role, "email": email,
                                              "role": role, "password": PASSWORD},
                              headers={"Authorization": f"Bearer {result['admin']}"})
        assert created.status_code == 201, created.text
        result[role] = login(email)
    return result


def _call(client, path, method, token):
    url = re.sub(r"\{role\}", "nurse", re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs = {"json": {}} if method in ("post", "patch") else {}
    return client.request(method.upper(), url, headers=headers, **kwargs)


@pytest.mark.parametrize("path,method,operation", OPERATIONS, ids=[op for _, _, op in OPERATIONS])
def test_role_matrix(client, tokens, path, method, operation):
    expected = MATRIX[operation]
    if expected == "public":
        response = _call(client, path, method, None)
        assert response.status_code not in (401, 403), (operation, response.text)
        return
    anonymous = _call(client, path, method, None)
    assert anonymous.status_code == 401, operation
    allowed = ROLES if expected == "any" else expected
    for role in ROLES:
        response = _call(client, path, method, tokens[role])
        if role in allowed:
            assert response.status_code != 403, (operation, role, response.text)
        else:
            assert response.status_code == 403, (operation, role, response.status_code)
            assert error_of(response)["code"] == "INSUFFICIENT_SCOPE"
