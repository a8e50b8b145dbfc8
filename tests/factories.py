"""Set-up shared by the tests.

- Rows are written through the engine, as the API writes them, not over HTTP: HTTP is for the
  behaviour a test is about. ``build_world`` makes one live row of every kind a body references.
- ``RESOURCES`` holds one sample of every resource the generic tests run over. It is derived, not
  kept by hand: every top-level resource with a create and an update operation, its bodies from the
  ``example`` of those operations' request schemas in ``spec/openapi.yaml``, its references and
  embeds from its descriptor. A new resource is covered once its schemas carry examples; until
  they do, collecting the tests fails, naming the path.
"""
from __future__ import annotations

import datetime as dt
import functools
import itertools
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import sqlalchemy as sa
import yaml

import config
import state
from models import contract, crud, database
from models import resources as descriptors
from models.crud import Reference
from models.tenancy import Caller
from tests.conftest import PASSWORD


@dataclass
class World:
    """An organization with one live row of every kind a body can reference."""

    org: Any  # tests.conftest.Org, or anything with org_id, branch_id and admin_id
    branch_id: str
    staff_id: str
    patient_id: str
    supplier_id: str
    loan_id: str
    staff_email: str = ""

    @property
    def admin_id(self) -> str:
        """The admin: unlike the doctor, a member who holds every scope a reference may ask for."""
        return self.org.admin_id


def post(client, org, path, body):
    response = client.post(path, json=body, headers=org.headers)
    assert response.status_code == 201, (path, response.text)
    return response.json()["data"]


def statements_sent(engine, action: Callable[[], Any]) -> list[tuple[str, Any]]:
    """Each statement ``action`` sent through ``engine``, as sent, with its parameters."""
    seen = []

    def remember(_conn, _cursor, statement, parameters, *_args):
        seen.append((statement, parameters))

    sa.event.listen(engine, "after_cursor_execute", remember)
    try:
        action()
    finally:
        sa.event.remove(engine, "after_cursor_execute", remember)
    return seen


def make_row(org, name: str, body: dict) -> dict:
    """Create a row of resource ``name`` for ``org``'s admin through the engine."""
    caller = Caller(user_id=str(org.admin_id), org_id=str(org.org_id), scopes=frozenset())
    return crud.create_row(state.current().resources[name], caller, body)


def build_world(org) -> World:
    staff = make_row(org, "staff", {"branch_id": org.branch_id, "name": "Dr Who", "role": "doctor",
                                    "email": f"doc-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD})
    patient = make_row(org, "patient", {"branch_id": org.branch_id, "name": "Amy Pond"})
    supplier = make_row(org, "supplier", {"name": "MedSupply"})
    loan = make_row(org, "loan", {"lender": "Bank", "original_amount": 1000,
                                  "start_date": "2026-01-01T00:00:00Z", "interest_rate": 6})
    return World(org, str(org.branch_id), str(staff["id"]), str(patient["id"]), str(supplier["id"]),
                 str(loan["id"]), staff["email"])


_slots = itertools.count()


def next_slot() -> str:
    """A start time no other appointment of the test run uses (a staff member books one at a time)."""
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=next(_slots))
    return start.isoformat()


# --- one sample of every resource, from the spec's examples and the descriptors -----------------

class Sample(NamedTuple):
    path: str
    key: str  # the list's key in a page
    create: Callable[[World], dict]  # a fresh create body for that world
    patch: dict
    references: dict  # body field -> the World attribute naming a valid target
    embeds: list


@functools.cache
def openapi() -> dict:
    with open(config.ROOT / "spec" / "openapi.yaml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def as_read(name: str, created: dict) -> dict:
    """A create's answer as a read shows the row: without what only the create answer carries
    (a webhook's signing secret is shown once)."""
    hidden = state.current().resources[name].hidden
    return {field: value for field, value in created.items() if field not in hidden}


def _request_schema(path: str, method: str) -> dict | None:
    operation = openapi()["paths"].get(path, {}).get(method)
    if operation is None or "requestBody" not in operation:
        return None
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return openapi()["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def _world_attribute(target) -> str:
    # A reference with a condition (a member who holds some scope) is met by the admin, who holds
    # them all; a plain one by the world's row of that table.
    return "admin_id" if isinstance(target, Reference) else f"{target.name}_id"


@functools.cache
def _unique_columns(table: sa.Table) -> frozenset[str]:
    """Columns a unique index or an exclusion constraint of the live schema names: a sample must
    vary them from one create to the next."""
    with database.current_engine().connect() as conn:
        definitions = conn.execute(sa.text(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = CAST(:t AS regclass)"
            " AND (indisunique OR indisexclusion) AND NOT indisprimary"), {"t": table.name}).scalars().all()
    words = {word for definition in definitions for word in re.findall(r"\w+", definition.split(" USING ", 1)[-1])}
    return frozenset(words & set(table.c.keys())) - {"org_id", "deleted_at"}


def _fresh(schema: dict, field: str, value, unique: frozenset[str]):
    kind = schema["properties"][field].get("format")
    if kind == "date-time":
        return next_slot()  # no two samples at one instant: some rules forbid overlapping times
    if kind == "uri":
        # The tests' app may send to loopback (WEBHOOK_ALLOW_PRIVATE_TARGETS) and resolves no
        # outside name, so an example's host is swapped for the loopback address.
        return re.sub(r"^(\w+://)[^/]+", r"\g<1>127.0.0.1", value)
    if field in unique:
        return f"{uuid.uuid4().hex[:6]}-{value}"
    return value


def _sample(resource) -> Sample | None:
    create_schema = _request_schema(resource.path, "post")
    update_schema = _request_schema(f"{resource.path}/{{id}}", "patch")
    if resource.parent is not None or create_schema is None or update_schema is None:
        return None
    example, patch = create_schema.get("example"), update_schema.get("example")
    if example is None or patch is None:
        raise AssertionError(f"{resource.path}: its create and update request schemas need an example")
    references = {field: _world_attribute(target) for field, target in resource.references.items()}

    def create(world: World) -> dict:
        unique = _unique_columns(resource.table)
        return {field: getattr(world, references[field]) if field in references
                else _fresh(create_schema, field, value, unique) for field, value in example.items()}

    return Sample(resource.path, resource.plural, create, patch, references, list(resource.embeds))


RESOURCES = {name: sample for name, sample in
             ((r.name, _sample(r)) for r in contract.derive(openapi(), descriptors.ALL).values()) if sample}
NAMES = list(RESOURCES)
