"""Roles: what each grants, and who holds which."""
from handlers import no_content, ok
from middleware.tenancy import current_caller
from models import accounts


def list_roles():
    """Every role with its scopes."""
    return ok(accounts.list_roles())


def list_staff_roles(id_: str):
    """The roles a staff member holds."""
    return ok(accounts.staff_roles(current_caller(), id_))


def grant_staff_role(id_: str, body: dict):
    """Grant a role to a staff member."""
    return ok(accounts.grant(current_caller(), id_, body["role"]))


def revoke_staff_role(id_: str, role: str):
    """Revoke a role from a staff member."""
    accounts.revoke(current_caller(), id_, role)
    return no_content()
