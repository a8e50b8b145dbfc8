"""Staff: the people who work at the clinic; their passwords and role grants are hooks of the resource."""
from handlers import crud_operations
from models.resources import STAFF_MEMBERS

list_staff, get_staff_member, create_staff_member, update_staff_member, delete_staff_member = crud_operations(STAFF_MEMBERS)
