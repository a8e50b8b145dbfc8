"""The audit trail, read-only: every change and sign-in of the organization."""
from handlers import crud_operations, ok
from middleware.tenancy import current_caller
from models import database, trail
from models.resources import AUDIT_LOGS

list_audit_logs = crud_operations(AUDIT_LOGS)[0]


def list_audit_seals():
    """The organization's latest seal of each trail, to be copied outside the database."""
    caller = current_caller()
    seals = database.read(lambda conn: trail.latest_seals(conn, caller.org_id))
    return ok({"seals": seals, "total": len(seals), "total_estimated": False})
