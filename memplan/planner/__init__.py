"""The planner: what to change so a run fits, how far the batch goes, how many GPUs it needs, which algorithm
needs least. Every answer is a search over ``memplan.estimate`` (pure Python, ~0.1–0.5 ms a call).

One module per thing, data flowing one way (each imports only those above it):

    candidates   PlanCandidate, candidate_cost, objective_key, PlanReport; ``accepted``, the one test of a
                 configuration that every search applies
    dimensions   the change dimensions of ``plan``, one per knob (``KNOBS``), and the knobs a framework cannot
                 apply (the table of what is never proposed, and why)
    search       the best-first knob search at the request's GPU count (``search_knobs``)
    limits       the largest batch that fits: max_micro_batch_size, max_rollout_batch_size,
                 max_score_micro_batch_size, batch_limit, LimitReport
    fewest       the fewest GPUs: min_gpus, gpu_limit (within a time budget too), plan(objective="fewest-gpus")

``plan`` (here) checks its arguments and runs the knob search, at the request's GPU count or, for
``objective="fewest-gpus"``, at the fewest GPUs where something fits.

``max_micro_batch_size``, ``max_rollout_batch_size``, ``max_score_micro_batch_size`` and ``min_gpus`` answer
one number each (doubling, then bisection); ``batch_limit`` and ``gpu_limit`` wrap them in a ``LimitReport``
that carries the estimate at the answer and one step past it (one more sequence; the next smaller GPU count),
which does not fit.
"""

from __future__ import annotations

import time
from math import inf

from memplan.errors import InputError
# every public name of the former memplan/planner.py stays importable from here (F401: re-exports)
from memplan.planner.candidates import (COST_ORDER, GENERATES, IDLE_LEVEL, KNOBS, OBJECTIVES, OFFLOAD_LEVEL,
                                        ZERO_FIELDS, Knob, Objective, PlanCandidate, PlanReport, candidate_cost,
                                        objective_key)  # noqa: F401
from memplan.planner.dimensions import IDLE, LORA_RANKS, MIN_STAGE, TRAINED, VLLM_FRACTIONS  # noqa: F401
from memplan.planner.fewest import MAX_GPUS, gpu_limit, min_gpus, plan_fewest_gpus  # noqa: F401
from memplan.planner.limits import (BATCH_FIELDS, TOKEN_FIELDS, LimitReport, batch_limit, max_micro_batch_size,
                                    max_rollout_batch_size, max_score_micro_batch_size, scored_sequences)  # noqa: F401
from memplan.planner.search import DIM_KNOB, MAX_CANDIDATES, MAX_EVALUATIONS, search_knobs  # noqa: F401
from memplan.report import EstimateRequest


def plan(request: EstimateRequest, *, allow: set[str] | None = None, max_results: int = 20,
         allow_tight: bool = False, objective: str = "fastest", dataset_samples: int | None = None,
         price_per_gpu_hour: float | None = None) -> PlanReport:
    """Configurations that fit (GPU memory and host RAM), reached by changing only the ``allow``-ed knobs
    (default: all of ``KNOBS``), best first by ``objective`` (``objective_key``: the estimated time per prompt
    of ``memplan.step_time``, the GPU count, or the GPU-hours), ``candidate_cost`` breaking ties: LoRA instead
    of the asked-for full fine-tuning ranks last; then fewer CPU offloads, no recomputation, lower TP, lower ZeRO
    stages, colocated roles, a larger vLLM fraction, a larger LoRA rank, a larger micro batch, fewer changed
    fields. ``dataset_samples`` adds each candidate's wall time (and ranks by it: the steps are whole);
    ``price_per_gpu_hour`` its price.

    The search collects up to ``MAX_CANDIDATES`` minimal configurations in ``candidate_cost`` order, then ranks
    them by the objective: a configuration that changes more than a fitting one (a superset of its changes) is
    not proposed even where the time model finds it faster.

    If the request does not fit, the candidates are its minimal memory-saving changes ('fix'; past the host's
    RAM, undoing offloads too); if it fits, the cheapest relaxations that still fit ('relax'; the request
    itself is ``as_given``). When nothing fits, ``fits_any`` is False and ``candidates`` holds the
    configuration with the smallest peak found. A TIGHT configuration fits only with ``allow_tight``
    (``candidates.accepted``). Raises ``InputError`` for an unknown knob or an invalid request.
    """
    start = time.perf_counter()
    allow = set(KNOBS) if allow is None else set(allow)
    if unknown := sorted(allow - set(KNOBS)):
        raise InputError("allow", f"unknown knobs {unknown}; allowed: {', '.join(KNOBS)}", unknown)
    if max_results < 1:
        raise InputError("max_results", "must be at least 1", max_results)
    if objective not in OBJECTIVES:
        raise InputError("objective", f"must be one of {', '.join(OBJECTIVES)}", objective)
    if dataset_samples is not None and dataset_samples < 1:
        raise InputError("dataset_samples", "must be at least 1", dataset_samples)
    if price_per_gpu_hour is not None and not 0 < price_per_gpu_hour < inf:
        raise InputError("price_per_gpu_hour", "must be a positive number", price_per_gpu_hour)
    search = dict(allow=allow, max_results=max_results, allow_tight=allow_tight, dataset_samples=dataset_samples,
                  price_per_gpu_hour=price_per_gpu_hour)
    if objective == "fewest-gpus":  # the GPU count searched around the knob search
        return plan_fewest_gpus(request, start, **search)
    return search_knobs(request, start, objective=objective, **search)


__all__ = [
    "COST_ORDER",
    "KNOBS",
    "MAX_CANDIDATES",
    "OBJECTIVES",
    "Knob",
    "LimitReport",
    "Objective",
    "PlanCandidate",
    "PlanReport",
    "batch_limit",
    "candidate_cost",
    "gpu_limit",
    "max_micro_batch_size",
    "max_rollout_batch_size",
    "min_gpus",
    "objective_key",
    "plan",
]
