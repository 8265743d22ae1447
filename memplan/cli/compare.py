"""``memplan compare``: one model and cluster under several algorithms, side by side."""

from __future__ import annotations

import sys
from typing import Annotated, Any, get_args

import typer

import memplan
from memplan import plot as plots
from memplan.cli import render
from memplan.cli.options import BATCH_SEMANTICS, JsonOption, PlotOption, command_line, request_command, write_plot
from memplan.cli.plan import next_steps
from memplan.errors import InputError
from memplan.estimator import for_algorithm
from memplan.comparison import DEFAULT_ALGOS, compare_algorithms, compare_reports, compared_algos, ppo_of
from memplan.report import Algo, EstimateRequest

ALGOS = get_args(Algo)


def parse_algos(text: str) -> list[str]:
    """'ppo,grpo , remax' → ['ppo', 'grpo', 'remax']; names checked against ``memplan.report.Algo``."""
    names = [a.strip().lower() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in ALGOS]
    if bad or not names:
        problem = f"unknown algorithm {bad[0]!r}" if bad else "no algorithm given"
        raise InputError("algos", f"{problem}; allowed: {', '.join(ALGOS)}", text)
    return list(dict.fromkeys(names))


@request_command
def compare(
    request: EstimateRequest,
    algos: Annotated[str | None, typer.Option(
        help=f"Comma-separated algorithms to compare (overrides --algo). Default: {','.join(DEFAULT_ALGOS)}; with "
        "--framework, those of them the framework runs", rich_help_panel="Algorithm")] = None,
    json: JsonOption = False,
    plot: PlotOption = None,
    given: dict[str, Any] | None = None,
) -> None:
    names, notes = compared_algos(request, None if algos is None else parse_algos(algos))
    for note in notes:  # the default list cut to the framework's algorithms
        print(f"note: {note}", file=sys.stderr)
    # each algorithm's request: the options it has no use for back at their defaults, then validated
    requests = [for_algorithm(request, a) for a in names]
    if plot is not None:  # one panel per algorithm that runs (the table says why the others do not)
        reports = [report for r in requests if (report := _try(r)) is not None] or [memplan.estimate(requests[0])]
        write_plot(plots.phase_bars, reports, plot)
    if json:
        # one Report (+ step_time) per algorithm: any that cannot run is an error; no PPO baseline under TRL
        render.json_out(compare_reports(requests, ppo_of(request)))
        return
    result = compare_algorithms(request, names)  # saving vs PPO, estimated even when PPO is not listed
    if all(row.error for row in result.rows):
        memplan.estimate(requests[0])  # raises the error, naming the option
    render.compare(result)
    short = [row.algo for row in result.rows if row.error is None and row.verdict != "fits"]
    if short:  # the planner only for those that do not fit (tens of estimates each)
        render.compare_next_steps(
            {algo: next_steps(next(r for r in requests if r.algo == algo), max_results=1) for algo in short},
            {algo: command_line("plan", given or {}, algo=algo) for algo in short})


def _try(request: EstimateRequest) -> memplan.Report | None:
    try:
        return memplan.estimate(request)
    except InputError:
        return None


compare.__doc__ = f"""Compare algorithms on the same model and cluster: peak per GPU, resident models, the phase that sets the peak, host RAM, the saving relative to PPO (estimated even when PPO is not listed), and the estimated seconds per step and speed relative to PPO (memplan's time model: see memplan time).

Example: memplan compare --model meta-llama/Llama-2-7b-hf --gpus 8xA100-40GB --algos ppo,remax,grpo

{BATCH_SEMANTICS}
"""
