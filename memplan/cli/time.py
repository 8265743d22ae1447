"""``memplan time``: seconds per step of one planned run, phase by phase, and the wall time for a data set.

Takes the same options as ``estimate`` (``request_command``). The text output is plain lines formatted here
while ``render.py`` is being reworked; it moves there when the time joins ``estimate``'s report.
"""

from __future__ import annotations

from typing import Annotated

import typer

from memplan.cli.options import BATCH_SEMANTICS, JsonOption, request_command
from memplan.report import EstimateRequest
from memplan.timing import StepTime, step_time

_TIME = "Time"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_step_time(result: StepTime) -> str:
    """The step time as text: one line per phase (seconds, share), its blocks beneath, then totals and notes."""
    lines = [f"{result.algo} on {result.num_gpus}×{result.gpu}: {result.seconds_per_step:.2f} s per step "
             f"({result.prompts_per_step} prompts, {result.tokens_per_step} tokens over all GPUs)"]
    for phase in result.phases:
        lines.append(f"  {phase.phase:<14} {phase.seconds:8.2f} s  {phase.share:6.1%}")
        for item in phase.items:
            lines.append(f"      {item.role:<10} {item.seconds:8.2f} s  [{item.bound}] {item.what}")
    lines.append(f"tokens/s per GPU: {result.tokens_per_second_per_gpu:.0f}; dominant phase: {result.dominant_phase}")
    if result.wall_seconds is not None:
        lines.append(f"data set: {result.dataset_samples} prompts × {result.epochs} epoch(s) = {result.steps} steps "
                     f"→ {_duration(result.wall_seconds)} ({result.wall_seconds / 3600:.2f} h)")
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


@request_command
def time(
    request: EstimateRequest,
    dataset_samples: Annotated[int | None, typer.Option(
        help="Prompts (DPO/SFT: samples) in the data set: prints the steps and wall time", min=1,
        rich_help_panel=_TIME)] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the data set", min=1, rich_help_panel=_TIME)] = 1,
    json: JsonOption = False,
) -> None:
    result = step_time(request, dataset_samples=dataset_samples, epochs=epochs)
    if json:
        print(result.model_dump_json(indent=2))
        return
    print(format_step_time(result))


time.__doc__ = f"""Estimate the time of one training step, phase by phase, and the wall time for a data set.

Example: memplan time --model meta-llama/Llama-2-7b-hf --algo remax --gpus 4xA100-80GB --dataset-samples 45000

{BATCH_SEMANTICS}
"""
