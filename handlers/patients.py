"""Patients: the people the clinic treats."""
from handlers import crud_operations
from models.resources import PATIENTS

list_patients, get_patient, create_patient, update_patient, delete_patient = crud_operations(PATIENTS)
