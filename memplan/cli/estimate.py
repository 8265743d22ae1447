"""``memplan estimate``: the per-GPU peak of one planned run, phase by phase, and whether it fits."""

from __future__ import annotations

from typing import Any

import memplan
from memplan import plot as plots
from memplan.cli import emitting, render
from memplan.cli.options import (BATCH_SEMANTICS, JsonOption, PlotOption, command_line, request_command,
                                  write_plot)
from memplan.cli.plan import next_steps
from memplan.comparison import timed as step_time_or_none
from memplan.report import EstimateRequest


@request_command
def estimate(request: EstimateRequest, json: JsonOption = False, plot: PlotOption = None,
             emit: emitting.EmitOption = None, out: emitting.OutOption = None,
             given: dict[str, Any] | None = None) -> None:
    emitting.check(emit, out, None)
    report = memplan.estimate(request)
    if emit is not None:
        emitting.write(request, emit, out)
        if out is None:  # stdout is the launch file
            return
    if plot is not None:
        write_plot(plots.phase_bars, report, plot)
    if json:
        render.json_out(report)
        return
    render.estimate(report)
    timed = step_time_or_none(request)  # ~0.3 ms; absent when the GPU has no performance figures
    if timed is not None:
        render.step_time(timed)
    if report.verdict != "fits":  # only then (TIGHT too): the planner runs tens of estimates (~60 ms)
        found = next_steps(request)
        command = command_line("plan", given or {})
        if found is not None and not found.fits_any:  # the fewest GPUs, with the closest setting's changes
            closest = {field: new for field, (_, new) in found.candidates[0].changes.items()}
            command = command_line("plan", given or {}, **closest) + " --min-gpus"
        render.next_steps(found, command)


estimate.__doc__ = f"""Estimate the peak memory per GPU of one run, phase by phase, and say whether it fits.

Example: memplan estimate --model meta-llama/Llama-2-7b-hf --algo ppo --gpus 8xA100-40GB

{BATCH_SEMANTICS}
"""
