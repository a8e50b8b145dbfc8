"""Transactions: payments, charges and refunds of patients."""
from handlers import create_in, delete_in, list_of, one_of, update_in


def list_transactions(**params):
    """One page of the organization's transactions, newest first."""
    return list_of("transaction", **params)


def get_transaction(id_: str, embed=None):
    """One transaction."""
    return one_of("transaction", id_, embed=embed)


def create_transaction(body: dict):
    """Record a transaction."""
    return create_in("transaction", body)


def update_transaction(id_: str, body: dict):
    """Change the fields sent of a transaction."""
    return update_in("transaction", id_, body)


def delete_transaction(id_: str):
    """Soft-delete a transaction."""
    return delete_in("transaction", id_)
