"""One descriptor per resource: everything that differs between them, and nothing else."""
from __future__ import annotations

from models import tables as t
from models.crud import Embed, Resource, equals

# Never embedded or returned: the login secret.
STAFF_SECRETS = frozenset({"password_hash"})


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def patient_search_text(table):
    """Must stay identical to the expression of patient_search_trgm_idx (sql/0005)."""
    return (table.c.name + " " + t.sa_coalesce(table.c.email) + " " + t.sa_coalesce(table.c.phone))


def patient_search(table, term: str):
    return patient_search_text(table).ilike(f"%{_escape_like(term)}%")


PATIENTS = Resource(
    name="patient",
    plural="patients",
    table=t.patient,
    references={"branch_id": t.branch},
    filters={"status": equals("status"), "branch_id": equals("branch_id"), "search": patient_search},
    embeds={"branch": Embed(t.branch, column="branch_id")},
)
