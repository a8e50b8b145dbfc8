"""schemathesis over every operation of the spec: positive and negative data, every check.

The app validates its own responses (VALIDATE_RESPONSES=true in the test settings), and
schemathesis checks status codes, headers, content types and bodies against the spec.
"""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

import config
import tests.contract_hooks  # noqa: F401  (registers the hooks)
from middleware import validation

schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=config.contract_examples(), deadline=None, derandomize=not config.contract_random(),
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_the_contract(case, contract_org, both_verdicts):
    case.call_and_validate(headers=contract_org.headers)
    assert not both_verdicts, both_verdicts[:3]


@pytest.fixture
def both_verdicts(monkeypatch):
    """Every body and parameter schemathesis sends is judged by jsonschema and by the quick check
    (validation.RequestRules); the quick check may refuse what jsonschema accepts (that costs
    time only), never accept what it refuses. The answer is jsonschema's."""
    accepted_wrongly = []

    def judged(rules, instance):
        errors = list(rules.validator.iter_errors(instance))
        if errors and rules.quick is not None:
            try:
                if rules.quick.is_valid(instance):
                    accepted_wrongly.append((rules.validator.schema, instance))
            except (ValueError, TypeError, OverflowError):
                pass
        return iter(errors)

    monkeypatch.setattr(validation.RequestRules, "iter_errors", judged)
    return accepted_wrongly
