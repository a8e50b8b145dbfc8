"""Inventory: the stock held at each branch."""
from handlers import crud_operations
from models.resources import INVENTORY

list_inventory_items, get_inventory_item, create_inventory_item, update_inventory_item, delete_inventory_item = crud_operations(INVENTORY)
