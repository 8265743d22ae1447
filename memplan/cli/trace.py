"""``memplan trace``: run the configuration on fake tensors (torch, no GPU) and report what it allocates."""

from __future__ import annotations

from typing import Annotated

import typer

import memplan
from memplan.cli import render
from memplan.cli.options import BATCH_SEMANTICS, JsonOption, request_command
from memplan.report import EstimateRequest

WorldSizeOption = Annotated[int, typer.Option(
    "--world-size",
    help="Ranks to trace: 1 runs every model whole in one process; N > 1 traces rank 0 of an N-rank PyTorch FSDP2 "
         "run (fully_shard over a fake process group; needs --engine fsdp and --zero-stage 2 or 3)",
)]


@request_command
def trace(request: EstimateRequest, world_size: WorldSizeOption = 1, json: JsonOption = False) -> None:
    from memplan import harness  # torch is imported only here (the [measure] extra)

    result = harness.trace(request) if world_size == 1 else harness.trace_sharded(request, world_size)
    if json:
        render.json_out(result)
    else:
        render.trace(result, memplan.estimate(request))


trace.__doc__ = f"""Trace one training step on fake tensors (needs torch; no GPU, no weights) and compare the traced peak with the estimate. With --world-size N > 1, rank 0 of an N-rank FSDP2 run.

{BATCH_SEMANTICS}
"""
