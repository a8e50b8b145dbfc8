"""A parameter value once accepted is accepted again without jsonschema: the verdicts must stay
the same as validating every time, and a refused value is never remembered."""
from __future__ import annotations

import pytest

from middleware import adapter, validation

_PAGE = {"type": "integer", "minimum": 1, "maximum": 1000}
_EMBED = {"type": "array", "items": {"type": "string", "enum": ["patient", "staff", "branch"]}}
_ID = {"type": "string", "format": "uuid"}


@pytest.mark.parametrize("schema, values", [
    (_PAGE, [1, 2, 1000, 0, 1001, True, 1.0, 1.5, "1", 1, True]),
    (_EMBED, [["patient"], ["patient", "staff"], ["nobody"], [], ["patient"], [1], ["patient", "bogus"]]),
    (_ID, ["94fbf2f7-e38d-893b-6d5c-d3f9d720f526", "not-a-uuid", "94fbf2f7-e38d-893b-6d5c-d3f9d720f526", 7]),
])
def test_remembered_verdicts_are_the_verdicts(schema, values, monkeypatch):
    monkeypatch.setattr(validation, "_accepted", {})
    validator = adapter.compiled(schema)
    for value in values * 2:
        expected = validation.best_match(validator.iter_errors(value))
        problem = validation.parameter_problem(validator, value)
        assert (problem is None) == (expected is None), value
        if expected is not None:
            assert problem == expected.message


def test_a_refused_value_is_never_remembered(monkeypatch):
    monkeypatch.setattr(validation, "_accepted", {})
    validator = adapter.compiled(_PAGE)
    assert validation.parameter_problem(validator, 0) is not None
    assert validation.parameter_problem(validator, 0) is not None
    assert validation.parameter_problem(validator, 1) is None
    assert list(validation._accepted) == [(id(validator), int, 1)]


def test_the_remembered_values_are_bounded(monkeypatch):
    monkeypatch.setattr(validation, "_accepted", {})
    monkeypatch.setattr(validation, "_ACCEPTED_KEPT", 10)
    validator = adapter.compiled({"type": "integer"})
    for value in range(25):
        assert validation.parameter_problem(validator, value) is None
    assert len(validation._accepted) <= 10
