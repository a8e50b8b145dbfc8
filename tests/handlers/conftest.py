"""Fixtures of the handler tests."""
import pytest

from tests.factories import build_world


@pytest.fixture
def world_a(client, org_a):
    return build_world(org_a)


@pytest.fixture
def world_b(client, org_b):
    return build_world(org_b)
