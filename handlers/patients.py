"""Patients: the people the clinic treats."""
from handlers import crud_operations
from models.resources import PATIENTS

_ops = crud_operations(PATIENTS)
list_patients = _ops.list
get_patient = _ops.get
create_patient = _ops.create
update_patient = _ops.update
delete_patient = _ops.delete
