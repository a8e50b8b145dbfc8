"""Prescriptions written for patients."""
from handlers import create_in, delete_in, list_of, one_of, update_in


def list_prescriptions(**params):
    """One page of the organization's prescriptions, newest first."""
    return list_of("prescription", **params)


def get_prescription(id_: str, embed=None):
    """One prescription."""
    return one_of("prescription", id_, embed=embed)


def create_prescription(body: dict):
    """Record a prescription."""
    return create_in("prescription", body)


def update_prescription(id_: str, body: dict):
    """Change the fields sent of a prescription."""
    return update_in("prescription", id_, body)


def delete_prescription(id_: str):
    """Soft-delete a prescription."""
    return delete_in("prescription", id_)
