"""Property-based fuzzing of the service from its own OpenAPI schema (schemathesis, every check it has).

Bodies that the schema allows and bodies it forbids (positive and negative modes, NUL and any other code point
in strings); for each: no 5xx, only documented statuses, answers that match their documented schema, schema-
invalid bodies refused. Schemathesis' own ``positive_data_acceptance`` is replaced by a stricter reading of what
"the schema tells the truth" can mean for this service: a schema-valid body is answered, or refused for one of
memplan's own reasons (an ``InputError``: a launch script with nothing in it that the reader knows, knobs that
contradict each other, a cluster the node cannot hold) — never by a rule of the schema's own kind (a type, a
range, a length, a name not in the enum), which would mean the schema let through what the service refuses.

Non-finite numbers and lone surrogates are not JSON that schemathesis writes; ``test_api_security`` sends them.
Bounded: ``MAX_EXAMPLES`` cases per operation and mode, no deadline, about two minutes on two cores.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from api.main import create_app
from memplan.errors import InputError

MAX_EXAMPLES = 40
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_x00=True)


def _names(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_names(sub) for sub in cls.__subclasses__()))


MEMPLANS_REASONS = _names(InputError)


@schemathesis.check
def refused_only_for_memplans_reasons(ctx, response, case) -> bool | None:  # noqa: ARG001 (schemathesis' signature)
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE or any(
            c.mode is not GenerationMode.POSITIVE for c in meta.components.values()):
        return None
    assert response.status_code in (200, 422), f"schema-valid body answered {response.status_code}"
    if response.status_code == 422:
        kinds = {d["type"] for d in response.json()["detail"]}
        assert kinds <= MEMPLANS_REASONS, f"schema-valid body refused by a schema rule: {response.text[:400]}"
    return True


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_tells_the_truth(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance],
                           additional_checks=[refused_only_for_memplans_reasons])
