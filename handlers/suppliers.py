"""Suppliers: who the clinic buys stock from."""
from handlers import create_in, delete_in, list_of, one_of, update_in


def list_suppliers(**params):
    """One page of the organization's suppliers, newest first."""
    return list_of("supplier", **params)


def get_supplier(id_: str, embed=None):
    """One supplier."""
    return one_of("supplier", id_, embed=embed)


def create_supplier(body: dict):
    """Add a supplier."""
    return create_in("supplier", body)


def update_supplier(id_: str, body: dict):
    """Change the fields sent of a supplier."""
    return update_in("supplier", id_, body)


def delete_supplier(id_: str):
    """Soft-delete a supplier."""
    return delete_in("supplier", id_)
