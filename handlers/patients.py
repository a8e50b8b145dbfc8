"""Patients: the people the clinic treats."""
from handlers import create_in, delete_in, list_of, listed, one_of, update_in
from middleware.tenancy import current_caller
from models import access


def list_patients(**params):
    """One page of the organization's patients, newest first."""
    return list_of("patient", **params)


def get_patient(id_: str, embed=None):
    """One patient."""
    return one_of("patient", id_, embed=embed)


def create_patient(body: dict):
    """Register a patient."""
    return create_in("patient", body)


def update_patient(id_: str, body: dict):
    """Change the fields sent of a patient."""
    return update_in("patient", id_, body)


def delete_patient(id_: str):
    """Soft-delete a patient."""
    return delete_in("patient", id_)


def get_patient_access_log(id_: str, page: int = 1, page_size: int = 20, updated_since=None, cursor=None):
    """Who read or changed a patient's record, newest first (or what was written since, to sync)."""
    return listed(access.patient_history(current_caller(), id_, page=page, page_size=page_size,
                                         updated_since=updated_since, cursor=cursor), page, page_size)
