"""``memplan measure``: run the configuration (fake tensors or a real CUDA GPU) and report its peaks."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

import memplan
from memplan.cli import render
from memplan.cli.options import BATCH_SEMANTICS, JsonOption, request_command
from memplan.report import EstimateRequest


@request_command
def measure(
    request: EstimateRequest,
    backend: Annotated[Literal["cuda", "fake"], typer.Option(help="Where to run: a CUDA GPU or fake tensors")] = (
        "cuda"),
    json: JsonOption = False,
) -> None:
    from memplan import harness  # torch is imported only here (the [measure] extra)
    from memplan.harness.records import CudaRecord

    result = harness.measure(request, backend=backend)
    if json:
        render.json_out(result)
    elif isinstance(result, CudaRecord):
        render.measured(result)
    else:
        render.trace(result, memplan.estimate(request))


measure.__doc__ = f"""Measure two training steps (allocated, reserved and NVML peaks) and the ratio estimate ÷ measured. Needs torch; --backend cuda needs a GPU.

{BATCH_SEMANTICS}
"""
