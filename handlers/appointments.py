"""Appointments: a patient booked with a staff member at a branch."""
from handlers import create_in, delete_in, list_of, one_of, update_in


def list_appointments(**params):
    """One page of the organization's appointments, newest first."""
    return list_of("appointment", **params)


def get_appointment(id_: str, embed=None):
    """One appointment."""
    return one_of("appointment", id_, embed=embed)


def create_appointment(body: dict):
    """Book an appointment."""
    return create_in("appointment", body)


def update_appointment(id_: str, body: dict):
    """Change the fields sent of an appointment."""
    return update_in("appointment", id_, body)


def delete_appointment(id_: str):
    """Soft-delete an appointment."""
    return delete_in("appointment", id_)
