"""Tenant scoping has one home: ``models/tenancy.py`` is the only module that compares org_id."""
from __future__ import annotations

import re

import config
from models import tables
from models.tenancy import Caller, check_org, scoped

import pytest

from errors import ApiError

_COMPARISON = re.compile(r"org_id\s*(==|!=)|(==|!=)\s*[\w.\[\]\"']*org_id\b")


def test_org_id_is_compared_only_in_the_tenancy_module():
    offenders = []
    for package in ("models", "middleware", "handlers"):
        for path in sorted((config.ROOT / package).glob("*.py")):
            if path.name == "tenancy.py" and package == "models":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _COMPARISON.search(line):
                    offenders.append(f"{package}/{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_scoped_binds_the_organization_and_hides_deleted_rows():
    organization, deleted = scoped(tables.patient, "org-1")
    assert (str(organization), organization.right.value) == ("patient.org_id = :org_id_1", "org-1")
    assert str(deleted) == "patient.deleted_at IS NULL"


def test_scoped_on_an_append_only_table_has_no_deleted_filter():
    (condition,) = scoped(tables.audit_log, "org-1")
    assert "deleted_at" not in str(condition)


def test_an_org_id_sent_by_the_client_must_be_the_callers():
    caller = Caller(user_id="u", org_id="org-1", scopes=frozenset())
    check_org(None, caller)
    check_org("org-1", caller)
    with pytest.raises(ApiError) as refused:
        check_org("org-2", caller)
    assert (refused.value.code, refused.value.field) == ("ORG_MISMATCH", "org_id")


def test_a_callers_origin_is_asked_only_when_used():
    asked = []
    caller = Caller(user_id="u", org_id="o", scopes=frozenset(), origin_of=lambda: asked.append(1) or {"ip_address": "x"})
    assert asked == []
    assert caller.origin == {"ip_address": "x"} and caller.origin == {"ip_address": "x"}
    assert asked == [1]
