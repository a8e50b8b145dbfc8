"""schemathesis stateful runs: create -> get -> patch -> delete chains through the spec's links."""
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

import config
import tests.contract_hooks  # noqa: F401  (registers the hooks)


def test_workflows_through_links_keep_the_contract(app, contract_org):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    followed = []

    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": contract_org.headers}

        def after_call(self, response, case):
            super().after_call(response, case)
            if case.path.endswith("{id}") or case.path.endswith("{paymentId}"):
                followed.append((case.method, response.status_code))

    run_state_machine_as_test(Workflow, settings=settings(
        max_examples=config.contract_examples(), stateful_step_count=6, deadline=None,
        derandomize=not config.contract_random(), suppress_health_check=list(HealthCheck)))
    # The chains did reach records they had created: a call through a link succeeded.
    assert any(status < 300 for _, status in followed), followed
