"""The fewest GPUs: ``min_gpus`` (the fewest of the request's GPU kind at which the request, as given, fits),
``gpu_limit`` (the same with the estimates at it and at the next smaller count, and optionally within a time
budget for the data set), and ``plan(objective="fewest-gpus")``: the knob search at the fewest GPUs at which an
allowed configuration fits (``plan_fewest_gpus``). The counts tried are ``_gpu_counts``': 1, 2, 4, 8 in turn,
then doubling and bisection over the multiples of 8, as memory per GPU falls as GPUs are added.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from memplan.comparison import timed
from memplan.errors import InputError
from memplan.estimator import estimate
from memplan.planner.candidates import PlanCandidate, PlanReport, accepted, estimate_or_none, to_candidate
from memplan.planner.limits import LimitReport
from memplan.planner.search import search_knobs
from memplan.report import EstimateRequest, on_cluster

MAX_GPUS = 4096
"""The largest cluster ``min_gpus`` and ``gpu_limit`` try."""


def _gpu_counts(request: EstimateRequest) -> list[str]:
    """The clusters ``min_gpus`` tries, smallest first, as ``gpus`` strings: 1, 2, 4, 8, then multiples of 8.

    Up to one node the cluster is ``'N x GPU'``; beyond, whole nodes. A node holds the request's GPUs per
    node when it names several nodes, else max(its GPUs, the GPU's ``gpus_per_node``) (a one-GPU request still
    means full nodes: 8 for SXM boards).
    """
    from memplan.catalog import parse_cluster

    cluster = parse_cluster(request.gpus)
    node = cluster.gpus_per_node if cluster.num_nodes > 1 else max(cluster.gpus_per_node, cluster.gpu.gpus_per_node)
    name = cluster.gpu.name
    counts = [n for n in (1, 2, 4, 8, *range(16, MAX_GPUS + 1, 8)) if n <= node or n % node == 0]
    return [f"{n}x{name}" if n <= node else f"{n // node}x{node}x{name}" for n in counts]


def _num_gpus(gpus: str) -> int:
    from memplan.catalog import parse_cluster

    return parse_cluster(gpus).num_gpus


def min_gpus(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The smallest number of the request's GPU that fits (GPU and host), or None up to 4096.

    Tries the clusters of ``_gpu_counts``: 1, 2, 4, 8 in turn, then doubling and bisection over the multiples
    of 8 (memory per GPU falls as GPUs are added). The answer fits and the count before it does not.
    """
    clusters = _gpu_counts(request)
    i = _fewest(request, clusters, allow_tight)
    return None if i is None else _num_gpus(clusters[i])


def _fewest(request: EstimateRequest, clusters: list[str], allow_tight: bool = False,
            within: Callable[[EstimateRequest], bool] | None = None) -> int | None:
    """Index of the first cluster that fits (``accepted``) — and, given ``within``, passes it too (a time budget:
    ``_within_budget``) — searched as ``min_gpus`` says."""

    def fits(i: int) -> bool:
        req = on_cluster(request, clusters[i])  # an unset zero_stage follows the GPU count
        return accepted(estimate_or_none(req), allow_tight) and (within is None or within(req))

    small = [i for i, c in enumerate(clusters) if _num_gpus(c) <= 8]
    first = next((i for i in small if fits(i)), None)
    if first is not None:
        return first
    lo, hi, step = small[-1], 0, 1  # fits at hi, not at lo
    while not hi:
        if lo == len(clusters) - 1:
            return None
        nxt = min(lo + step, len(clusters) - 1)
        lo, hi, step = (lo, nxt, step) if fits(nxt) else (nxt, 0, 2 * step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi



def _within_budget(dataset_samples: int, budget_seconds: float) -> Callable[[EstimateRequest], bool]:
    """``memplan.step_time``'s wall time for the data set at most ``budget_seconds`` (False where the time model
    cannot run the request)."""

    def within(req: EstimateRequest) -> bool:
        t = timed(req, dataset_samples)
        return t is not None and t.wall_seconds is not None and t.wall_seconds <= budget_seconds

    return within


def gpu_limit(request: EstimateRequest, *, allow_tight: bool = False, time_budget_seconds: float | None = None,
              dataset_samples: int | None = None) -> LimitReport:
    """``min_gpus`` with the estimates at it and at the next smaller GPU count of ``_gpu_counts``. With
    ``time_budget_seconds`` (and ``dataset_samples``): the fewest GPUs that fit *and* go through the data set
    within the budget by ``memplan.step_time``'s estimate. The search assumes, as for memory, that more GPUs
    never take longer (more prompts per step, fewer steps); crossing onto the network can break that, so the
    answer is the first count found by doubling and bisection, not a proof that no smaller count passes."""
    start = time.perf_counter()
    estimate(request)  # bad input raises here, naming its field
    within = None
    if time_budget_seconds is not None:
        if not time_budget_seconds > 0:
            raise InputError("time_budget", "must be a positive duration (e.g. 6h, 90m, 3600s)", time_budget_seconds)
        if dataset_samples is None:
            raise InputError("dataset_samples", "is needed with a time budget: the prompts (DPO/SFT: samples) the "
                             "run goes through", None)
        within = _within_budget(dataset_samples, time_budget_seconds)
    clusters = _gpu_counts(request)
    i = _fewest(request, clusters, allow_tight, within)
    past = i - 1 if i is not None else len(clusters) - 1

    def at(cluster: str) -> PlanCandidate | None:
        report = estimate_or_none(request.model_copy(update={"gpus": cluster}))
        return None if report is None else to_candidate(request, report, dataset_samples)

    return LimitReport(
        request=request, search="min_gpus", min_gpus=None if i is None else _num_gpus(clusters[i]),
        found=i is not None, allow_tight=allow_tight, at_limit=None if i is None else at(clusters[i]),
        past_limit=at(clusters[past]) if past >= 0 else None, time_budget_seconds=time_budget_seconds,
        elapsed_ms=round((time.perf_counter() - start) * 1e3, 3),
    )


def plan_fewest_gpus(request: EstimateRequest, start: float, **search: Any) -> PlanReport:
    """``plan(objective="fewest-gpus")``: the knob search (ranked fastest first) at the fewest GPUs of the
    request's kind, at most the request's count, at which an allowed configuration fits. The counts are
    ``_gpu_counts``' below the request's, then the request's own: 1, 2, 4, 8 in turn, then doubling and bisection
    (as ``min_gpus``: more GPUs never need more memory per GPU). Each candidate's changes start with ``gpus``
    when the count is smaller. When nothing fits even at the request's count, that count's plan (its closest)."""
    clusters = [c for c in _gpu_counts(request) if _num_gpus(c) < _num_gpus(request.gpus)] + [request.gpus]
    reports: dict[int, PlanReport] = {}

    def fits(i: int) -> bool:
        if i not in reports:
            try:
                reports[i] = search_knobs(request.model_copy(update={"gpus": clusters[i]}), time.perf_counter(),
                                          objective="fastest", **search)
            except InputError:  # e.g. a tensor-parallel degree above the smaller count
                return False
        return reports[i].fits_any

    last = len(clusters) - 1
    small = [i for i in range(last) if _num_gpus(clusters[i]) <= 8]
    chosen = next((i for i in small if fits(i)), None)
    if chosen is None:
        lo, hi = (small[-1] if small else -1), last  # lo does not fit; hi is the request's count
        if fits(hi):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if fits(mid) else (mid, hi)
        chosen = hi
    found = (reports[chosen] if chosen in reports
             else search_knobs(request, time.perf_counter(), objective="fastest", **search))
    moved = clusters[chosen] != request.gpus
    candidates = [c.model_copy(update={"changes": {"gpus": (request.gpus, clusters[chosen]), **c.changes}})
                  if moved else c for c in found.candidates]
    tried = ", ".join(str(_num_gpus(clusters[i])) for i in sorted(reports))
    note = (f"fewest-gpus: the knob search ran at {tried} GPU(s); {_num_gpus(clusters[chosen])} is the fewest at "
            "which an allowed configuration fits" if found.fits_any else
            "fewest-gpus: nothing fits even at the request's GPU count")
    as_given = to_candidate(request, estimate(request), search.get("dataset_samples"), search.get("price_per_gpu_hour"))
    return found.model_copy(update={
        "request": request, "as_given": as_given, "candidates": candidates, "objective": "fewest-gpus",
        "evaluations": sum(r.evaluations for r in reports.values()), "notes": [*found.notes, note],
        "elapsed_ms": round((time.perf_counter() - start) * 1e3, 3)})

