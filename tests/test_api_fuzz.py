"""Property-based fuzzing of the service from its own OpenAPI schema (schemathesis): no input gets a 5xx.

Bounded: a few dozen generated cases per operation, no deadline, well under a minute in all.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from api.main import create_app

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    assert response.status_code in (200, 405, 413, 422), (case.method, case.path, response.status_code)
