"""Financial reports of the organization."""
from handlers import crud_operations
from models.resources import FINANCIAL_REPORTS

list_financial_reports, get_financial_report, create_financial_report, update_financial_report, delete_financial_report = crud_operations(FINANCIAL_REPORTS)
