"""Inventory: the stock held at each branch."""
from handlers import create_in, delete_in, list_of, one_of, update_in


def list_inventory_items(**params):
    """One page of the organization's inventory items, newest first."""
    return list_of("inventory_item", **params)


def get_inventory_item(id_: str, embed=None):
    """One inventory item."""
    return one_of("inventory_item", id_, embed=embed)


def create_inventory_item(body: dict):
    """Add an inventory item."""
    return create_in("inventory_item", body)


def update_inventory_item(id_: str, body: dict):
    """Change the fields sent of an inventory item."""
    return update_in("inventory_item", id_, body)


def delete_inventory_item(id_: str):
    """Soft-delete an inventory item."""
    return delete_in("inventory_item", id_)
