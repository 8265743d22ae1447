"""``memplan estimate``: the per-GPU peak of one planned run, phase by phase, and whether it fits."""

from __future__ import annotations

import memplan
from memplan.cli import render
from memplan.cli.options import BATCH_SEMANTICS, JsonOption, request_command
from memplan.report import EstimateRequest


@request_command
def estimate(request: EstimateRequest, json: JsonOption = False) -> None:
    report = memplan.estimate(request)
    if json:
        render.json_out(report)
    else:
        render.estimate(report)


estimate.__doc__ = f"""Estimate the peak memory per GPU of one run, phase by phase, and say whether it fits.

Example: memplan estimate --model meta-llama/Llama-2-7b-hf --algo ppo --gpus 8xA100-40GB

{BATCH_SEMANTICS}
"""
