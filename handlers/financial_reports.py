"""Financial reports of the organization."""
from handlers import create_in, delete_in, list_of, one_of, update_in


def list_financial_reports(**params):
    """One page of the organization's financial reports, newest first."""
    return list_of("financial_report", **params)


def get_financial_report(id_: str, embed=None):
    """One financial report."""
    return one_of("financial_report", id_, embed=embed)


def create_financial_report(body: dict):
    """File a financial report."""
    return create_in("financial_report", body)


def update_financial_report(id_: str, body: dict):
    """Change the fields sent of a financial report."""
    return update_in("financial_report", id_, body)


def delete_financial_report(id_: str):
    """Soft-delete a financial report."""
    return delete_in("financial_report", id_)
