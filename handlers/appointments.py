"""Appointments: a patient booked with a staff member at a branch."""
from handlers import crud_operations
from models.resources import APPOINTMENTS

list_appointments, get_appointment, create_appointment, update_appointment, delete_appointment = crud_operations(APPOINTMENTS)
