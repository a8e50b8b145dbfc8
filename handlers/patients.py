"""Patients: the people the clinic treats."""
from handlers import crud_operations, listed
from middleware.tenancy import current_caller
from models import access
from models.resources import PATIENTS

list_patients, get_patient, create_patient, update_patient, delete_patient = crud_operations(PATIENTS)


def get_patient_access_log(id_: str, page: int = 1, page_size: int = 20):
    """Who read or changed a patient's record, newest first."""
    return listed(access.patient_history(current_caller(), id_, page=page, page_size=page_size), page, page_size)
