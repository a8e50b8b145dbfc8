"""Prescriptions written for patients."""
from handlers import crud_operations
from models.resources import PRESCRIPTIONS

list_prescriptions, get_prescription, create_prescription, update_prescription, delete_prescription = crud_operations(PRESCRIPTIONS)
