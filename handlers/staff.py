"""Staff: the people who work at the clinic; their passwords and role grants are hooks of the resource."""
from handlers import create_in, delete_in, list_of, no_content, one_of, update_in
from middleware.tenancy import current_caller, request_origin
from models import sessions


def list_staff(**params):
    """One page of the organization's staff, newest first."""
    return list_of("staff", **params)


def get_staff_member(id_: str, embed=None):
    """One staff member."""
    return one_of("staff", id_, embed=embed)


def create_staff_member(body: dict):
    """Add a staff member with a login."""
    return create_in("staff", body)


def update_staff_member(id_: str, body: dict):
    """Change the fields sent of a staff member."""
    return update_in("staff", id_, body)


def delete_staff_member(id_: str):
    """Soft-delete a staff member; their sessions end."""
    return delete_in("staff", id_)


def end_staff_sessions(id_: str):
    """End every session of a staff member: their tokens stop working everywhere within a second."""
    sessions.end_member_sessions(current_caller(), id_, request_origin())
    return no_content()
