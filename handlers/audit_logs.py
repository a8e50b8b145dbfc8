"""The audit trail, read-only: every change and sign-in of the organization, and its seals."""
from handlers import list_of, ok
from middleware.tenancy import current_caller
from models import database, trail


def list_audit_logs(**params):
    """One page of the organization's audit trail, newest first."""
    return list_of("audit_log", **params)


def list_audit_seals():
    """The organization's latest seal of each trail, to be copied outside the database."""
    caller = current_caller()
    seals = database.read(lambda conn: trail.latest_seals(conn, caller.org_id))
    return ok({"seals": seals, "total": len(seals), "total_estimated": False})
