"""Suppliers: who the clinic buys stock from."""
from handlers import crud_operations
from models.resources import SUPPLIERS

list_suppliers, get_supplier, create_supplier, update_supplier, delete_supplier = crud_operations(SUPPLIERS)
