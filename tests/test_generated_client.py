"""Client authors' path: a Python client generated from spec/openapi.yaml drives a real scenario.

The client is generated into a temporary folder with openapi-python-client (never committed),
imported, and run against a live server: typed results, readable method names.
"""
import importlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from config import ROOT
from tests.conftest import PASSWORD

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


def generate(source: list[str], target: Path) -> Path:
    """A client package generated into ``target`` from ``--path FILE`` or ``--url URL``."""
    if not GENERATOR.exists():
        pytest.fail("openapi-python-client is missing: `make install` installs the test extras")
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(GENERATOR), "generate", *source, "--meta", "none", "--output-path", str(target / "clinic_client")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target / "clinic_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    target = tmp_path_factory.mktemp("client")
    generate(["--path", str(ROOT / "spec" / "openapi.yaml")], target)
    sys.path.insert(0, str(target))
    try:
        yield importlib.import_module("clinic_client")
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m == "clinic_client" or m.startswith("clinic_client.")]:
            del sys.modules[name]
        shutil.rmtree(target, ignore_errors=True)


def _tree(package: Path) -> dict[str, str]:
    return {str(f.relative_to(package)): f.read_text() for f in sorted(package.rglob("*.py"))}


@pytest.mark.parametrize("document", ["openapi.json", "openapi.yaml"])
def test_the_served_spec_generates_the_same_client_as_the_file(generated, live_server, tmp_path, document):
    """A team pointing its generator at the running service gets the client the repository's
    spec gives: the served document keeps every $ref (inlined, it gave 2,707 model files, not 132)."""
    from_file = _tree(Path(generated.__file__).parent)
    from_server = _tree(generate(["--url", f"{live_server}/{document}"], tmp_path))
    assert len([name for name in from_file if name.startswith("models/")]) < 200
    assert from_server.keys() == from_file.keys()
    assert [name for name in from_file if from_server[name] != from_file[name]] == []


def test_generated_client_runs_a_clinic_day(generated, live_server, org_a):
    from clinic_client import AuthenticatedClient, Client
    from clinic_client.api.appointments import create_appointment, list_appointments
    from clinic_client.api.auth import get_current_user, login, logout, refresh_token
    from clinic_client.api.branches import create_branch
    from clinic_client.api.loans import create_loan, create_loan_payment, get_loan
    from clinic_client.api.patients import create_patient, list_patients
    from clinic_client.api.staff import create_staff_member
    from clinic_client import models

    anonymous = Client(base_url=live_server, raise_on_unexpected_status=True)
    session = login.sync(client=anonymous, body=models.LoginRequest(email=org_a.admin_email, password=PASSWORD))
    assert isinstance(session, models.LoginResponse)
    api = AuthenticatedClient(base_url=live_server, token=session.data.access_token, raise_on_unexpected_status=True)
    assert get_current_user.sync(client=api).data.email == org_a.admin_email

    branch = create_branch.sync(client=api, body=models.BranchCreate(name="East Wing")).data
    doctor = create_staff_member.sync(client=api, body=models.StaffCreate(
        branch_id=branch.id, name="Dr Quinn", email=f"quinn-{uuid.uuid4().hex[:6]}@example.com",
        role=models.RoleName.DOCTOR, password=PASSWORD)).data
    patient = create_patient.sync(client=api, body=models.PatientCreate(branch_id=branch.id, name="Sully")).data
    assert isinstance(patient, models.Patient) and patient.branch_id == branch.id

    booked = create_appointment.sync(client=api, body=models.AppointmentCreate(
        patient_id=patient.id, staff_id=doctor.id, branch_id=branch.id,
        date=__import__("datetime").datetime(2032, 1, 5, 9, 0, tzinfo=__import__("datetime").timezone.utc))).data
    assert booked.duration_minutes == 30

    page = list_appointments.sync(client=api, patient_id=patient.id,
                                  embed=[models.ListAppointmentsEmbedItem.PATIENT,
                                         models.ListAppointmentsEmbedItem.STAFF]).data
    assert page.total == 1 and page.appointments[0].patient.name == "Sully"
    assert page.appointments[0].staff.name == "Dr Quinn"
    found = list_patients.sync(client=api, search="sully").data
    assert [p.id for p in found.patients] == [patient.id]

    loan = create_loan.sync(client=api, body=models.LoanCreate(
        lender="Bank", original_amount=500, start_date=booked.date)).data
    payment = create_loan_payment.sync(client=api, id=loan.id, body=models.LoanPaymentCreate(amount=125.5)).data
    assert payment.amount == 125.5
    assert get_loan.sync(client=api, id=loan.id).data.remaining_balance == 374.5

    renewed = refresh_token.sync(client=anonymous, body=models.RefreshRequest(refresh_token=session.data.refresh_token))
    assert renewed.data.refresh_token != session.data.refresh_token
    response = logout.sync_detailed(client=anonymous, body=models.RefreshRequest(refresh_token=renewed.data.refresh_token))
    assert response.status_code == 204
