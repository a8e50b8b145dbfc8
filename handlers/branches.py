"""Branches: the organization's sites."""
from handlers import crud_operations
from models.resources import BRANCHES

list_branches, get_branch, create_branch, update_branch, delete_branch = crud_operations(BRANCHES)
