"""Set-up shared by the handler tests: a world of live rows to reference, and one table of
every resource's paths and bodies (the generic tests run over it)."""
from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import dataclass

from tests.conftest import PASSWORD


@dataclass
class World:
    """An organization with one live row of every kind a body can reference."""

    org: object
    branch_id: str
    staff_id: str
    patient_id: str
    supplier_id: str
    loan_id: str
    staff_email: str = ""

    @property
    def admin_id(self) -> str:
        """The admin: unlike the doctor, a member who may record transactions."""
        return self.org.admin_id


def post(client, org, path, body):
    response = client.post(path, json=body, headers=org.headers)
    assert response.status_code == 201, (path, response.text)
    return response.json()["data"]


def build_world(client, org) -> World:
    staff = post(client, org, "/staff", {"branch_id": org.branch_id, "name": "Dr Who",
                                         "email": f"doc-{uuid.uuid4().hex[:8]}@example.com",
                                         "role": "doctor", "password": PASSWORD})
    patient = post(client, org, "/patients", {"branch_id": org.branch_id, "name": "Amy Pond"})
    supplier = post(client, org, "/suppliers", {"name": "MedSupply"})
    loan = post(client, org, "/loans", {"lender": "Bank", "original_amount": 1000,
                                        "start_date": "2026-01-01T00:00:00Z", "interest_rate": 6})
    return World(org, org.branch_id, staff["id"], patient["id"], supplier["id"], loan["id"], staff["email"])


_slots = itertools.count()


def next_slot() -> str:
    """A start time no other appointment of the test run uses (a staff member books one at a time)."""
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=next(_slots))
    return start.isoformat()


# path, list key, create body, patch body, references (field -> World attribute), embeds
RESOURCES = {
    "branches": ("/branches", "branches", lambda w: {"name": "North", "address": "1 Road"},
                 {"address": "2 Road"}, {}, []),
    "staff": ("/staff", "staff", lambda w: {"branch_id": w.branch_id, "name": "Nurse Joy", "role": "nurse",
                                            "email": f"n-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD},
              {"name": "Nurse Joyce"}, {"branch_id": "branch_id"}, ["branch"]),
    "suppliers": ("/suppliers", "suppliers", lambda w: {"name": "Acme", "email": "sales@acme.test"},
                  {"phone": "555-0100"}, {}, []),
    "appointments": ("/appointments", "appointments",
                     lambda w: {"patient_id": w.patient_id, "staff_id": w.staff_id, "branch_id": w.branch_id,
                                "date": next_slot(), "type": "checkup"},
                     {"status": "confirmed"},
                     {"patient_id": "patient_id", "staff_id": "staff_id", "branch_id": "branch_id"},
                     ["patient", "staff", "branch"]),
    "prescriptions": ("/prescriptions", "prescriptions",
                      lambda w: {"patient_id": w.patient_id, "staff_id": w.staff_id, "type": "glasses",
                                 "data": {"sphere": -1.25}, "date": "2026-11-01T10:00:00Z"},
                      {"notes": "renew in a year"}, {"patient_id": "patient_id", "staff_id": "staff_id"},
                      ["patient", "staff"]),
    "transactions": ("/transactions", "transactions",
                     lambda w: {"patient_id": w.patient_id, "staff_id": w.admin_id, "amount": 120.5,
                                "type": "payment", "method": "card", "date": "2026-11-02T10:00:00Z"},
                     {"description": "consultation"}, {"patient_id": "patient_id", "staff_id": "admin_id"},
                     ["patient", "staff"]),
    "inventory": ("/inventory", "inventory",
                  lambda w: {"branch_id": w.branch_id, "supplier_id": w.supplier_id, "name": "Gloves",
                             "sku": f"GLV-{uuid.uuid4().hex[:6]}", "price": 9.99, "quantity": 100, "reorder_point": 10},
                  {"category": "consumables"}, {"branch_id": "branch_id", "supplier_id": "supplier_id"},
                  ["branch", "supplier"]),
    "loans": ("/loans", "loans", lambda w: {"lender": "Credit Union", "original_amount": 5000,
                                            "start_date": "2026-02-01T00:00:00Z"},
              {"notes": "refinanced"}, {}, ["payments"]),
    "community": ("/community/posts", "posts",
                  lambda w: {"title": "Welcome", "content": "Hello team", "tags": ["news"]},
                  {"title": "Welcome!"}, {}, ["staff"]),
    "reports": ("/financial/reports", "reports",
                lambda w: {"type": "monthly", "data": {"revenue": 1234.5}, "period": "2026-10-01T00:00:00Z"},
                {"data": {"revenue": 1300}}, {}, []),
}
NAMES = list(RESOURCES)
