"""``memplan trace``: run the configuration on fake tensors (torch, no GPU) and report what it allocates."""

from __future__ import annotations

import memplan
from memplan.cli import render
from memplan.cli.options import BATCH_SEMANTICS, JsonOption, request_command
from memplan.report import EstimateRequest


@request_command
def trace(request: EstimateRequest, json: JsonOption = False) -> None:
    from memplan import harness  # torch is imported only here (the [measure] extra)

    result = harness.trace(request)
    if json:
        render.json_out(result)
    else:
        render.trace(result, memplan.estimate(request))


trace.__doc__ = f"""Trace one training step on fake tensors (needs torch; no GPU, no weights) and compare the traced peak with the estimate.

{BATCH_SEMANTICS}
"""
