"""The audit trail, read-only: every change and sign-in of the organization."""
from handlers import crud_operations
from models.resources import AUDIT_LOGS

list_audit_logs = crud_operations(AUDIT_LOGS)[0]
