"""Loans and their payments. Recording a payment lowers the loan's balance (see LOAN_PAYMENTS)."""
from handlers import changed, create_in, delete_in, list_of, one_of, update_in
from models import resources


def list_loans(**params):
    """One page of the organization's loans, newest first."""
    return list_of("loan", **params)


def get_loan(id_: str, embed=None):
    """One loan."""
    return one_of("loan", id_, embed=embed)


def create_loan(body: dict):
    """Record a loan; its balance starts at the original amount."""
    return create_in("loan", body)


def update_loan(id_: str, body: dict):
    """Change the fields sent of a loan (never its balance or status)."""
    return update_in("loan", id_, body)


def delete_loan(id_: str):
    """Soft-delete a loan."""
    return delete_in("loan", id_)


def write_off_loan(id_: str):
    """Clear what is left of a loan without a payment; audited as a write_off."""
    return changed("loan", id_, resources.write_off, action="write_off")


def change_loan_standing(id_: str, body: dict):
    """Mark an open loan current, late or defaulted; audited as a change_standing."""
    return changed("loan", id_, resources.change_standing(body["status"]), action="change_standing")


def list_loan_payments(id_: str, page: int = 1, page_size: int = 20, updated_since=None, cursor=None):
    """One page of a loan's payments, newest first (or what changed, to sync)."""
    return list_of("loan_payment", page=page, page_size=page_size, parent_id=id_, updated_since=updated_since,
                   cursor=cursor)


def create_loan_payment(id_: str, body: dict):
    """Record a payment against a loan."""
    return create_in("loan_payment", body, parent_id=id_)


def get_loan_payment(id_: str, payment_id: str):
    """One payment of a loan."""
    return one_of("loan_payment", payment_id, parent_id=id_)


def update_loan_payment(id_: str, payment_id: str, body: dict):
    """Correct a payment; the balance moves by the difference."""
    return update_in("loan_payment", payment_id, body, parent_id=id_)


def delete_loan_payment(id_: str, payment_id: str):
    """Remove a payment; its amount goes back onto the balance."""
    return delete_in("loan_payment", payment_id, parent_id=id_)
