"""Transactions: payments, charges and refunds of patients."""
from handlers import crud_operations
from models.resources import TRANSACTIONS

list_transactions, get_transaction, create_transaction, update_transaction, delete_transaction = crud_operations(TRANSACTIONS)
