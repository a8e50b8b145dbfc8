"""The spec drives the engine: what a descriptor would repeat from the spec is derived from it at
start-up (models/contract.py), and what the engine cannot serve stops the start, naming it."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml

import app as application
from config import ROOT
from models import contract, database
from models import resources as r

SPEC = yaml.safe_load((ROOT / "spec" / "openapi.yaml").read_text())


def _listing(document: dict, path: str) -> dict:
    return document["paths"][path]["get"]


def test_a_query_parameter_without_a_filter_stops_the_start():
    document = copy.deepcopy(SPEC)
    _listing(document, "/patients")["parameters"].append({"name": "bloodType", "in": "query", "schema": {"type": "string"}})
    with pytest.raises(contract.ContractError, match="listPatients: query parameter bloodType has no x-filter"):
        contract.derive(document, r.ALL)


def test_a_filter_on_a_column_the_table_lacks_stops_the_start():
    document = copy.deepcopy(SPEC)
    _listing(document, "/patients")["parameters"].append(
        {"name": "bloodType", "in": "query", "x-filter": "equals", "schema": {"type": "string"}})
    with pytest.raises(contract.ContractError, match="names column blood_type, which patient lacks"):
        contract.derive(document, r.ALL)


def test_an_operation_without_a_handler_stops_the_start():
    document = copy.deepcopy(SPEC)
    document["paths"]["/patients/{id}"]["get"]["operationId"] = "getPatientChart"
    with pytest.raises(contract.ContractError, match=r"getPatientChart .* handlers.patients.get_patient_chart does not exist"):
        application.check_handlers(document)


def test_a_required_property_with_no_column_stops_the_start():
    document = copy.deepcopy(SPEC)
    create = document["components"]["schemas"]["PatientCreate"]
    create["properties"]["blood_type"] = {"type": "string"}
    create["required"] = [*create["required"], "blood_type"]
    with pytest.raises(contract.ContractError, match="blood_type is not a column of table patient"):
        contract.derive(document, r.ALL)


def test_filters_and_embeds_come_from_the_spec():
    appointments = contract.derive(SPEC, r.ALL)["appointment"]
    assert set(appointments.filters) == {"patient_id", "staff_id", "branch_id", "status", "date", "date_from", "date_to"}
    assert set(appointments.embeds) == {"patient", "staff", "branch"}
    assert appointments.embeds["patient"].hidden == r.PATIENTS.hidden
    loans = contract.derive(SPEC, r.ALL)["loan"]
    assert loans.embeds["payments"].back_column == "loan_id"


SCRATCH_SCENARIO = """
import json, sys
import config, state
from app import create_app
from models import accounts, database

url = sys.argv[1]
database.migrate(url)
settings = config.load({"APP_ENV": "test", "BCRYPT_ROUNDS": "4",
                        "RATE_LIMIT_ENABLED": "false", "VALIDATE_RESPONSES": "true", "LOG_LEVEL": "WARNING"})
app = create_app(settings, database_url=url)
state.bind(app.state)
ids = accounts.create_organization(name="Scratch", branch_name="Main", admin_email="a@scratch.example",
                                   admin_password="scratch-password-1")
with app.test_client() as client:
    token = client.post("/auth/login", json={"email": "a@scratch.example", "password": "scratch-password-1"})
    headers = {"Authorization": "Bearer " + token.json()["data"]["access_token"]}
    created = client.post("/patients", json={"branch_id": ids["branch_id"], "name": "Ada", "allergies": "penicillin"},
                          headers=headers)
    patient = created.json()["data"]
    read = client.get("/patients/" + patient["id"], headers=headers).json()["data"]
    changed = client.patch("/patients/" + patient["id"], json={"allergies": "latex"}, headers=headers).json()["data"]
    listed = client.get("/patients", headers=headers).json()["data"]["patients"]
print(json.dumps({"created": created.status_code, "read": read["allergies"], "changed": changed["allergies"],
                  "listed": [p["allergies"] for p in listed]}))
app.state.pools.dispose()
"""


def test_a_nullable_property_added_to_the_spec_and_a_migration_needs_no_python_edit(tmp_path, server_url):
    """On a scratch copy of the project: one property in the spec, one column in a migration, and
    the API stores, returns, changes and lists it."""
    copy_root = tmp_path / "clinic-api"
    shutil.copytree(ROOT, copy_root, ignore=shutil.ignore_patterns(".venv", ".local", ".git", "node_modules",
                                                                     "__pycache__", "bench", "tests", "docs"))
    spec_path = copy_root / "spec" / "openapi.yaml"
    document = yaml.safe_load(spec_path.read_text())
    allergies = {"type": "string", "maxLength": 200, "nullable": True}
    for schema in ("Patient", "PatientCreate", "PatientUpdate"):
        document["components"]["schemas"][schema]["properties"]["allergies"] = dict(allergies)
    spec_path.write_text(yaml.safe_dump(document, sort_keys=False))
    last = sorted(p.stem for p in (copy_root / "sql").glob("*.sql") if not p.stem.endswith(".rollback"))[-1]
    number = int(last.split(".")[0]) + 1
    (copy_root / "sql" / f"{number:04d}.add-patient-allergies.sql").write_text(
        f"-- depends: {last}\nALTER TABLE patient ADD COLUMN allergies VARCHAR(200);\n")
    (copy_root / "sql" / f"{number:04d}.add-patient-allergies.rollback.sql").write_text(
        "ALTER TABLE patient DROP COLUMN allergies;\n")
    (copy_root / "scenario.py").write_text(SCRATCH_SCENARIO)

    name = f"clinic_scratch_{uuid.uuid4().hex[:10]}"
    database.ensure_database(server_url, name)
    try:
        done = subprocess.run([sys.executable, "scenario.py", database.with_database(server_url, name)],
                              cwd=copy_root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        database.drop_database(server_url, name)
    assert outcome == {"created": 201, "read": "penicillin", "changed": "latex", "listed": ["latex"]}
