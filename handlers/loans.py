"""Loans and their payments. Recording a payment lowers the loan's balance (see LOAN_PAYMENTS)."""
from handlers import created, crud_operations, if_match, listed, no_content, one
from middleware.tenancy import current_caller
from models import crud
from models import resources
from models.resources import LOAN_PAYMENTS, LOANS

list_loans, get_loan, create_loan, update_loan, delete_loan = crud_operations(LOANS)


def write_off_loan(id_: str):
    """Clear what is left of a loan without a payment; audited as a write_off."""
    return one(crud.change_row(LOANS, current_caller(), id_, resources.write_off, action="write_off"))


def change_loan_standing(id_: str, body: dict):
    """Mark an open loan current, late or defaulted; audited as a change_standing."""
    change = resources.change_standing(body["status"])
    return one(crud.change_row(LOANS, current_caller(), id_, change, action="change_standing"))


def list_loan_payments(id_: str, page: int = 1, page_size: int = 20):
    """One page of a loan's payments, newest first."""
    return listed(crud.list_rows(LOAN_PAYMENTS, current_caller(), page=page, page_size=page_size, parent_id=id_),
                  page, page_size)


def create_loan_payment(id_: str, body: dict):
    """Record a payment against a loan."""
    return created(LOAN_PAYMENTS, body, parent_id=id_)


def get_loan_payment(id_: str, payment_id: str):
    """One payment of a loan."""
    return one(crud.get_row(LOAN_PAYMENTS, current_caller(), payment_id, parent_id=id_))


def update_loan_payment(id_: str, payment_id: str, body: dict):
    """Correct a payment; the balance moves by the difference."""
    return one(crud.update_row(LOAN_PAYMENTS, current_caller(), payment_id, body, parent_id=id_,
                               expect=if_match()))


def delete_loan_payment(id_: str, payment_id: str):
    """Remove a payment; its amount goes back onto the balance."""
    crud.delete_row(LOAN_PAYMENTS, current_caller(), payment_id, parent_id=id_, expect=if_match())
    return no_content()
