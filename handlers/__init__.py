"""Operation handlers. Each module binds one resource's operationIds; the engine does the work."""
from __future__ import annotations

from middleware.tenancy import check_org, current_caller
from models import crud
from models.crud import Resource

# Context values connexion passes to handlers that take **kwargs; they are not query filters.
_CONTEXT_KEYS = ("user", "token_info", "org_id")


def ok(data, status: int = 200):
    """The success envelope."""
    return {"success": True, "data": data, "error": None}, status


def no_content():
    return None, 204


def crud_operations(resource: Resource) -> tuple:
    """The five standard operations of a resource, in the order list, get, create, update, delete,
    ready to be bound to its operationIds."""

    def list_(page: int = 1, page_size: int = 20, embed=None, **params):
        """List live rows of the caller's organization, newest first."""
        caller = current_caller()
        check_org(params.get("org_id"), caller)
        # pythonic_params turns a parameter named like a builtin into `type_`; filters use the plain name.
        filters = {k.rstrip("_"): v for k, v in params.items() if k not in _CONTEXT_KEYS}
        return ok(crud.list_rows(resource, caller, page=page, page_size=page_size,
                                 embed=embed, filters=filters))

    def get(id_: str, embed=None):
        """One live row of the caller's organization."""
        return ok(crud.get_row(resource, current_caller(), id_, embed=embed))

    def create(body: dict):
        """Create a row in the caller's organization."""
        return ok(crud.create_row(resource, current_caller(), body), 201)

    def update(id_: str, body: dict):
        """Change the fields sent."""
        return ok(crud.update_row(resource, current_caller(), id_, body))

    def delete(id_: str):
        """Soft-delete a row."""
        crud.delete_row(resource, current_caller(), id_)
        return no_content()

    return list_, get, create, update, delete
