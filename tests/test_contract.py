"""schemathesis over every operation of the spec: positive and negative data, every check.

The app validates its own responses (VALIDATE_RESPONSES=true in the test settings), and
schemathesis checks status codes, headers, content types and bodies against the spec.
"""
import schemathesis
from hypothesis import HealthCheck, settings

import config
import tests.contract_hooks  # noqa: F401  (registers the hooks)

schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=config.contract_examples(), deadline=None, derandomize=not config.contract_random(),
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_the_contract(case, contract_org):
    case.call_and_validate(headers=contract_org.headers)
