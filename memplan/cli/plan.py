"""``memplan plan``: what to change so the run fits, the largest batch that fits, or the fewest GPUs."""

from __future__ import annotations

from typing import Annotated

import typer

from memplan import plot as plots
from memplan.cli import emitting, render
from memplan.cli.options import BATCH_SEMANTICS, JsonOption, PlotOption, request_command, write_plot
from memplan.errors import InputError
from memplan.planner import KNOBS, OBJECTIVES, PlanReport, batch_limit, gpu_limit, plan as plan_search
from memplan.report import EstimateRequest

MAX_RESULTS = 100
SEARCH = "Search"  # --help panel of plan's own options


DURATION_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'6h', '90m', '3600s', '2d' or plain seconds ('3600') → seconds; InputError naming --time-budget."""
    value = text.strip().lower()
    unit = next((u for u in sorted(DURATION_UNITS, key=len, reverse=True) if value.endswith(u)), "")
    try:
        seconds = float(value[: len(value) - len(unit)].strip()) * DURATION_UNITS.get(unit, 1)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 1e9:  # NaN fails too
        raise InputError("time_budget", "must be a positive duration below ~30 years: a number with s, m, h or d "
                         "(e.g. 6h)", text)
    return seconds


def parse_allow(text: str) -> set[str]:
    """'zero_stage, offload,gradient-checkpointing' → {'zero_stage', 'offload', 'gradient_checkpointing'};
    'all' → every knob. Names are checked against ``memplan.planner.KNOBS``."""
    names = [k.strip().lower().replace("-", "_") for k in text.split(",") if k.strip()]
    if names == ["all"]:
        return set(KNOBS)
    bad = [k for k in names if k not in KNOBS]
    if bad or not names:
        problem = f"unknown knob {bad[0]!r}" if bad else "no knob given"
        raise InputError("allow", f"{problem}; allowed: all, or any of {', '.join(KNOBS)}", text)
    return set(names)


NEXT_STEPS = 3  # changes an estimate that does not fit suggests


def next_steps(request: EstimateRequest, max_results: int = NEXT_STEPS) -> PlanReport | None:
    """The planner's best changes that make ``request`` fit (``memplan.planner.plan``, every knob, fastest
    first), for a command whose run does not fit to end with; None when the planner cannot search this request."""
    try:
        return plan_search(request, allow=set(KNOBS), max_results=max_results)
    except InputError:
        return None


@request_command
def plan(
    request: EstimateRequest,
    allow: Annotated[str, typer.Option(
        help=f"Comma-separated knobs the search may change: {', '.join(KNOBS)} (default: all)",
        show_default=False, rich_help_panel=SEARCH)] = "all",
    max_batch: Annotated[bool, typer.Option(
        "--max-batch", help="Instead: the largest micro batch per GPU that fits (JSON: max_micro_batch_size); in "
        "tokens per GPU when the run caps micro batches by tokens, --max-tokens-per-gpu (JSON: max_max_tokens_per_gpu)",
        rich_help_panel=SEARCH)] = False,
    max_rollout_batch: Annotated[bool, typer.Option(
        "--max-rollout-batch", help="Instead: the largest rollout batch (prompts per GPU per generation) that "
        "fits, the micro batch as given (JSON: max_rollout_batch_size)", rich_help_panel=SEARCH)] = False,
    max_score_batch: Annotated[bool, typer.Option(
        "--max-score-batch", help="Instead: the largest scoring micro batch (sequences per log-prob, reward or "
        "value forward; verl's log_prob_micro_batch_size_per_gpu) that fits, at most the sequences a GPU scores "
        "(JSON: max_score_micro_batch_size)", rich_help_panel=SEARCH)] = False,
    min_gpus: Annotated[bool, typer.Option(
        "--min-gpus", help="Instead: the fewest GPUs of the --gpus kind that fit, the knobs as given",
        rich_help_panel=SEARCH)] = False,
    max_results: Annotated[int, typer.Option(
        help=f"Configurations to list, 1..{MAX_RESULTS}", rich_help_panel=SEARCH)] = 10,
    allow_tight: Annotated[bool, typer.Option(
        "--allow-tight", help="Count a TIGHT configuration (its peak within memplan's error band of capacity) as "
        "fitting when its point estimate fits; by default the search takes FITS only", rich_help_panel=SEARCH)] = False,
    objective: Annotated[str, typer.Option(
        help=f"Rank the configurations that fit: {' | '.join(OBJECTIVES)} (estimated time per prompt, GPU count, "
        "GPU-hours; memplan time)", rich_help_panel=SEARCH)] = "fastest",
    dataset_samples: Annotated[int | None, typer.Option(
        help="Prompts (DPO/SFT: samples) in the data set: each configuration's wall time (and GPU-hours)", min=1,
        rich_help_panel=SEARCH)] = None,
    price_per_gpu_hour: Annotated[float | None, typer.Option(
        help="Price of one GPU-hour: each configuration's price for the data set (with --dataset-samples)",
        rich_help_panel=SEARCH)] = None,
    time_budget: Annotated[str | None, typer.Option(
        help="With --min-gpus and --dataset-samples: the fewest GPUs that fit and finish the data set within this "
        "wall time by memplan time's estimate (e.g. 6h, 90m, 3600s, 2d)", rich_help_panel=SEARCH)] = None,
    json: JsonOption = False,
    plot: PlotOption = None,
    emit: emitting.EmitOption = None,
    row: emitting.RowOption = None,
    out: emitting.OutOption = None,
) -> None:
    emitting.check(emit, out, row)
    if plot is not None and not any((max_batch, max_rollout_batch, max_score_batch)):
        raise InputError("plot", "draws a batch search: add --max-batch, --max-rollout-batch or --max-score-batch "
                         "(memplan estimate --plot draws one configuration)", str(plot))
    modes = [name for name, on in (("max_batch", max_batch), ("max_rollout_batch", max_rollout_batch),
                                   ("max_score_batch", max_score_batch), ("min_gpus", min_gpus)) if on]
    if len(modes) > 1:
        raise InputError(modes[1], "choose one of --max-batch, --max-rollout-batch, --max-score-batch, --min-gpus",
                         True)
    if not 1 <= max_results <= MAX_RESULTS:
        raise InputError("max_results", f"must be 1..{MAX_RESULTS}, got {max_results}", max_results)
    objective = objective.strip().lower().replace("_", "-")
    if objective not in OBJECTIVES:
        raise InputError("objective", f"must be one of {', '.join(OBJECTIVES)}", objective)
    budget = None if time_budget is None else parse_duration(time_budget)
    if budget is not None and modes != ["min_gpus"]:
        raise InputError("time_budget", "goes with --min-gpus (the fewest GPUs that finish within it)", time_budget)
    if modes == ["min_gpus"]:
        result = gpu_limit(request, allow_tight=allow_tight, time_budget_seconds=budget,
                           dataset_samples=dataset_samples)
    elif modes:
        field = {"max_batch": "micro_batch_size", "max_rollout_batch": "rollout_batch_size",
                 "max_score_batch": "score_micro_batch_size"}[modes[0]]
        result = batch_limit(request, field, allow_tight=allow_tight)
    else:
        result = plan_search(request, allow=parse_allow(allow), max_results=max_results, allow_tight=allow_tight,
                             objective=objective, dataset_samples=dataset_samples,
                             price_per_gpu_hour=price_per_gpu_hour)
    if plot is not None:
        write_plot(plots.batch_curve, result, plot)
    if emit is not None:  # the request as given, or the plan's row --row
        if row is not None and modes:
            raise InputError("row", "picks one of the plan's ranked configurations: not with --max-batch, "
                             "--max-rollout-batch, --max-score-batch or --min-gpus", row)
        emitting.write(emitting.picked(request, () if modes else result.candidates, row), emit, out, row)
        if out is None:  # stdout is the launch file
            return
    if json:
        render.json_out(result)
    elif modes:
        render.limit(result)
    else:
        render.plan(result)


plan.__doc__ = f"""Search the knobs you allow (ZeRO stage, CPU offload, gradient checkpointing, LoRA, micro batch, tensor parallel, placement, vLLM memory fraction, idle offload, log-prob kernel, scoring micro batch) for configurations that fit, best first by --objective; or, with --max-batch / --max-rollout-batch / --max-score-batch / --min-gpus, the largest batch or the fewest GPUs that fit.

--objective fastest (default) ranks by memplan's estimated time per prompt (memplan time; the data set's wall time with --dataset-samples), fewest-gpus by GPU count then time, cheapest by GPU-hours (priced with --price-per-gpu-hour). LoRA instead of full fine-tuning ranks last whatever its time. Ties are broken by the cost, compared in order (lower first): LoRA instead of full fine-tuning, CPU offloads, recomputation, tensor-parallel degree, sum of ZeRO stages, split placement, smaller vLLM fraction, smaller LoRA rank, smaller micro batch, smaller scoring micro batch, a new log-prob kernel, number of changed settings. The times are estimates (benchmarks/results/timing.md gives their error against measured runs). Fits means GPU memory and host RAM (--host-ram-gib), with the verdict FITS: a TIGHT configuration (its peak within memplan's error band of capacity) counts only with --allow-tight.

Example: memplan plan --model meta-llama/Llama-2-7b-hf --algo ppo --gpus 8xA100-40GB --allow zero_stage,offload,gradient_checkpointing --objective fastest

{BATCH_SEMANTICS}
"""
