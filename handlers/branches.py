"""Branches: the organization's sites."""
from handlers import create_in, delete_in, list_of, one_of, update_in


def list_branches(**params):
    """One page of the organization's branches, newest first."""
    return list_of("branch", **params)


def get_branch(id_: str, embed=None):
    """One branch."""
    return one_of("branch", id_, embed=embed)


def create_branch(body: dict):
    """Open a branch."""
    return create_in("branch", body)


def update_branch(id_: str, body: dict):
    """Change the fields sent of a branch."""
    return update_in("branch", id_, body)


def delete_branch(id_: str):
    """Soft-delete a branch."""
    return delete_in("branch", id_)
