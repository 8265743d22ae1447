"""The knob search behind ``plan``: the configurations that fit at the request's GPU count, reached by changing
only the allowed knobs (``dimensions``), collected best first and ranked by the objective.

When the request does not fit the GPU, each dimension runs from the user's value toward the saving end
(changes that save memory); when it fits, from the cheap end up to the user's value (relaxations that still
fit); when it exceeds the host's RAM (``host_ram_bytes_per_node``), over every option, since undoing an
offload saves host RAM and costs GPU memory. "Fits" always means GPU memory and host RAM, and the verdict
FITS (``Report.verdict``: the peak's error band within capacity); a TIGHT configuration counts only with
``allow_tight`` (every search takes it), and then only where its point estimate fits (``Report.fits``): the planner
never proposes a run its own estimate puts over capacity. One helper, ``accepted``, decides for every search.
Best first, cheapest subtree first; at each node the remaining dimensions take their last option (micro
batch 1): if that does not fit, the subtree is pruned. A configuration at least as far along every
dimension as a feasible one that keeps the given micro batch (a superset of its changes; a changed placement
counts as one more change) is skipped unevaluated, so the answer is the set of minimal changes (up to
``MAX_CANDIDATES``), ranked by the objective (``objective_key``: ``memplan.step_time``'s time per prompt, the GPU
count or the GPU-hours; LoRA for full fine-tuning last), ``candidate_cost`` breaking ties; one that fits only at
a smaller micro batch prunes nothing (its supersets may keep more).
Evaluations are memoized and capped (``MAX_EVALUATIONS``). The bound assumes memory never rises along a
dimension; where it can (ZeRO stages on one GPU add buckets and gathers but shard nothing), a marginal
configuration may be missed.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import time

from memplan.estimator import estimate
from memplan.planner.candidates import (GENERATES, ZERO_FIELDS, PlanCandidate, PlanReport, accepted, candidate_cost,
                                        estimate_or_none, objective_key, to_candidate)
from memplan.planner.dimensions import IDLE, MIN_STAGE, TRAINED, VLLM_FRACTIONS, dimensions, vllm_starts
from memplan.report import EstimateRequest, Report
from memplan.units import GiB

MAX_CANDIDATES = 200
"""Minimal configurations the search collects before ranking them by the objective and keeping ``max_results``."""
MAX_EVALUATIONS = 800
"""~0.1–0.5 s of estimates; a plan that reaches it says ``exhaustive=False``."""
DIM_KNOB = {"actor": "actor_zero_stage", "critic": "critic_zero_stage", "reference": "ref_zero_stage/offload_ref",
            "reward": "reward_zero_stage/offload_reward"}
"""How ``PlanReport.knobs`` names a role's dimension."""


def _zero_fields(given: EstimateRequest, stages: dict[str, int]) -> dict[str, int | None]:
    """Request fields that give each role its stage, with as few fields changed as possible."""
    best: dict[str, int | None] = {}
    best_diff = None
    for base in dict.fromkeys([given.zero_stage, *stages.values()]):
        fields: dict[str, int | None] = {"zero_stage": base}
        for role, stage in stages.items():
            old = getattr(given, ZERO_FIELDS[role])
            fields[ZERO_FIELDS[role]] = old if old == stage else None if stage == base else stage
        diff = sum(value != getattr(given, name) for name, value in fields.items())
        if best_diff is None or diff < best_diff:
            best, best_diff = fields, diff
    return best


class _Exhausted(Exception):
    """``MAX_EVALUATIONS`` reached: the search stops and ranks what it has."""


def search_knobs(request: EstimateRequest, start: float, *, allow: set[str], max_results: int, allow_tight: bool,
                 objective: str, dataset_samples: int | None, price_per_gpu_hour: float | None) -> PlanReport:
    """``plan`` at the request's GPU count, its arguments already checked (``memplan.planner.plan``): the
    best-first search over ``dimensions`` described above. ``start``: ``time.perf_counter()`` when the plan began
    (``elapsed_ms``)."""
    base = estimate(request)
    fix = not accepted(base, allow_tight)
    side = "both" if not base.host_fits else "fix" if fix else "relax"
    dims = dimensions(request, base, allow, side)
    roles = [d.name for d in dims if d.name in ZERO_FIELDS]
    n = len(dims)
    last = [len(d.options) - 1 for d in dims]
    max_mb = request.micro_batch_size if fix and "micro_batch_size" in allow else 0
    memo: dict[EstimateRequest, Report | None] = {}
    found: dict[tuple[int, ...], int] = {}  # feasible leaf → 1 + the index of its last changed dimension
    closest = [base]

    built: dict[tuple, tuple[EstimateRequest, list[str]]] = {}
    zero_fields: dict[tuple, dict[str, int | None]] = {}

    def build(levels, mb: int = 1) -> tuple[EstimateRequest, list[str]]:
        key = (*levels, mb)
        if key not in built:
            built[key] = _build(levels, mb)
        return built[key]

    def _build(levels, mb: int) -> tuple[EstimateRequest, list[str]]:
        values = {d.name: d.options[i] for d, i in zip(dims, levels)}
        update = {k: v for k, v in values.items() if k not in ZERO_FIELDS}
        stages = {r: values[r] if r in TRAINED else values[r][0] for r in roles}
        for role, field in (("reference", "offload_ref"), ("reward", "offload_reward")):
            if role in values:
                update[field] = values[role][1]
        if values["lora_rank"] != request.lora_rank:  # LoRA: the reference is the actor with its adapter off
            update["ref"] = "lora-shared" if request.ref == "separate" else request.ref
            update["offload_ref"] = request.offload_ref
            stages.pop("reference", None)
        key = tuple(stages.items())
        if key not in zero_fields:
            zero_fields[key] = _zero_fields(request, stages)
        update.update(zero_fields[key])
        offload = update["offload"]
        update["offload"], update["idle_offload"] = (("none", offload[len(IDLE):]) if offload.startswith(IDLE)
                                                     else (offload, "none"))
        update["micro_batch_size"] = mb if max_mb else request.micro_batch_size
        if request.split_groups and update["placement"] == "colocated":  # every role on every GPU: no groups
            update["split_groups"] = ()
        elif request.split_groups and update.get("ref") == "lora-shared":  # the actor's own: on its GPUs already
            without = (tuple(role for role in group if role != "reference") for group in request.split_groups)
            update["split_groups"] = tuple(group for group in without if group)
        return request.model_copy(update=update), list(stages)

    def evaluate(levels, mb: int = 1) -> Report | None:
        req = build(levels, mb)[0]
        if req not in memo:
            if len(memo) >= MAX_EVALUATIONS:
                raise _Exhausted
            memo[req] = report = estimate_or_none(req)
            if report is not None and report.peak_bytes_per_gpu < closest[0].peak_bytes_per_gpu:
                closest[0] = report
        return memo[req]

    costs: dict[tuple, tuple[int, ...]] = {}

    def lower_cost(prefix: list[int]) -> tuple[int, ...]:  # no completion of the prefix costs less
        levels = (*prefix, *[0] * (n - len(prefix)))
        if levels not in costs:
            req, resident = build(levels, max_mb or 1)
            costs[levels] = tuple(candidate_cost(request, req, resident).values())
        return costs[levels]

    def dominated(prefix: list[int]) -> bool:  # a superset of the changes of a configuration that fits
        k = len(prefix)
        return any(end <= k and all(map(operator.le, f[:end], prefix)) for f, end in found.items())

    tp_at, offload_at = (next(i for i, d in enumerate(dims) if d.name == name) for name in ("tp", "offload"))

    def complete(prefix: list[int], rest: list[int]) -> Report | None:
        """The prefix completed by ``rest``; if invalid, with a smaller TP if TP is not fixed yet (split)."""
        levels = prefix + rest
        report = evaluate(levels)
        while report is None and tp_at >= len(prefix) and levels[tp_at] > 0:
            levels[tp_at] -= 1
            report = evaluate(levels)
        return report

    def may_fit(prefix: list[int]) -> bool:
        """Some completion may fit: the most saving one fits the GPU, the least offloaded one the host."""
        k = len(prefix)
        saving = complete(prefix, last[k:])
        if saving is None or not saving.gpu_fits or saving.host_fits:
            return saving is not None and saving.gpu_fits
        least = complete(prefix, [dims[i].host_least % len(dims[i].options) for i in range(k, n)])
        return least is None or least.host_fits

    def largest_fitting(levels: list[int]) -> Report:
        """The leaf at the largest micro batch (at most the given one) that fits; it fits at 1."""
        best = evaluate(levels)
        lo, hi = 1, max_mb + 1
        while hi - lo > 1:
            mid = max_mb if hi == max_mb + 1 else (lo + hi) // 2  # the given batch first
            report = evaluate(levels, mid)
            lo, hi, best = (mid, hi, report) if accepted(report, allow_tight) else (lo, mid, best)
        return best

    # best first: pop the subtree whose cheapest completion costs least; a popped leaf that fits is pushed
    # back with its real cost (its micro batch) and emitted when popped again, so candidates come in order
    heap: list = [(lower_cost([p]), i, [p], None) for i, p in enumerate(range(len(dims[0].options)))]
    heapq.heapify(heap)
    tie = itertools.count(len(heap))
    emitted: dict[EstimateRequest, PlanCandidate] = {}

    def emit(leaf: Report) -> None:
        resident = [m for m in leaf.models if not m.shares_weights_with]
        if leaf.request.placement == "colocated" or len(resident) > 1:  # split of a single model is no change
            emitted.setdefault(leaf.request, leaf)

    exhaustive = True  # the first max_results minimal configurations in cost order (or all) were reached
    ranked_all = True  # every minimal configuration was reached and ranked
    try:
        while heap and len(emitted) < MAX_CANDIDATES:
            _, _, prefix, leaf = heapq.heappop(heap)
            if leaf is not None:
                emit(leaf)
            elif dominated(prefix) or not may_fit(prefix):
                continue
            elif len(prefix) < n:
                d = dims[len(prefix)]
                low = MIN_STAGE.get(dims[offload_at].options[prefix[offload_at]], 0) if d.name in TRAINED else 0
                for i in (i for i, option in enumerate(d.options) if d.name not in TRAINED or option >= low):
                    heapq.heappush(heap, (lower_cost(prefix + [i]), next(tie), prefix + [i], None))
            elif accepted(evaluate(prefix), allow_tight):
                report = largest_fitting(prefix)
                if report.request.micro_batch_size >= max_mb:  # else a superset may keep a larger micro batch
                    found[tuple(prefix)] = max((i + 1 for i, level in enumerate(prefix) if level), default=0)
                resident = [m.role for m in report.models if not m.shares_weights_with]
                cost = tuple(candidate_cost(request, report.request, resident).values())
                heapq.heappush(heap, (cost, next(tie), prefix, report))
    except _Exhausted:
        exhaustive = len(emitted) >= max_results
        ranked_all = False
        for *_, leaf in sorted(entry for entry in heap if entry[3] is not None):
            if len(emitted) < MAX_CANDIDATES:
                emit(leaf)

    def candidate(report: Report) -> PlanCandidate:
        return to_candidate(request, report, dataset_samples, price_per_gpu_hour)

    # by the objective (stable, cost as the tie-breaker: the search's order breaks the rest), field-wise
    # supersets dropped, the first max_results kept
    ranked = sorted((candidate(leaf) for leaf in emitted.values()), key=lambda c: objective_key(c, objective))
    candidates = _minimal(ranked)[:max_results]
    notes = [] if exhaustive else [f"search stopped after {MAX_EVALUATIONS} estimates; better ones may exist"]
    if exhaustive and not ranked_all:
        notes.append(f"ranked the {len(emitted)} configurations reached (in cost order) within {MAX_EVALUATIONS} "
                     f"estimates; a {'faster' if objective != 'cheapest' else 'cheaper'} one may lie beyond")
    if candidates and all(c.seconds_per_step is None for c in candidates):
        notes.append(f"no time estimate for {base.gpu} (memplan/catalog/gpu_perf.json): ranked by cost_order")
    if not base.host_fits:
        notes.append(f"as given, host RAM per node ({base.host_bytes_per_node / GiB:.1f} GiB) exceeds "
                     f"host_ram_bytes_per_node ({request.host_ram_bytes_per_node / GiB:.1f} GiB): offloads "
                     "may be undone")
    if (request.rollout_engine == "vllm" and request.algo in GENERATES
            and not any(vllm_starts(request, u) for u in (*VLLM_FRACTIONS, request.vllm_gpu_memory_utilization))):
        notes.append(f"vLLM cannot start at any vllm_gpu_memory_utilization with vllm_tensor_parallel_size "
                     f"{request.vllm_tensor_parallel_size}: its weights and one sequence's KV cache need more of a GPU; "
                     "raise vllm_tensor_parallel_size (not a knob of the plan)")
    if not candidates:
        candidates = [candidate(closest[0])]
        notes.append("nothing fits with the allowed knobs; the candidate is the smallest peak found")
    knobs = [DIM_KNOB.get(d.name, d.name) for d in dims if len(d.options) > 1] + (
        ["micro_batch_size"] if max_mb > 1 else [])
    return PlanReport(
        request=request, as_given=candidate(base), mode="fix" if fix else "relax",
        fits_any=any(accepted(c, allow_tight) for c in candidates), allow_tight=allow_tight, candidates=candidates,
        objective=objective, dataset_samples=dataset_samples, price_per_gpu_hour=price_per_gpu_hour,
        knobs=knobs, evaluations=len(memo),
        exhaustive=exhaustive, ranked_all=ranked_all, elapsed_ms=round((time.perf_counter() - start) * 1e3, 3),
        notes=notes,
    )


def _minimal(candidates: list[PlanCandidate]) -> list[PlanCandidate]:
    """Drop a candidate whose changed fields (with their values) include all of another's and more: two role
    stages can read as one ``zero_stage`` change plus an override, so the search's dimension-wise minimality
    does not always show field by field."""
    diffs = [set(c.changes.items()) for c in candidates]
    return [c for c, d in zip(candidates, diffs) if not any(other < d for other in diffs)]

