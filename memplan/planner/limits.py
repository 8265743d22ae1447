"""The limits of one batch: the largest micro batch, rollout batch, scoring micro batch (or, where a run sizes its
micro batches by tokens, token cap) that fits, each one number found by doubling from 1, then bisection;
``batch_limit`` wraps the answer in a ``LimitReport`` with the estimate at it and one step past it (one more
sequence or token), which does not fit.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memplan.errors import InputError
from memplan.estimator import estimate
from memplan.estimator.resolve import resolve
from memplan.planner.candidates import GENERATES, PlanCandidate, accepted, estimate_or_none, to_candidate
from memplan.report import MAX_BATCH, MAX_TOKENS, EstimateRequest

BATCH_FIELDS = ("micro_batch_size", "rollout_batch_size", "score_micro_batch_size")
TOKEN_FIELDS = {"micro_batch_size": "max_tokens_per_gpu", "score_micro_batch_size": "score_max_tokens_per_gpu"}
"""The unit a framework sizes a micro batch in: tokens per GPU where the run gives a token cap (verl's use_dynamic_bsz,
OpenRLHF's dynamic batches), which ``batch_limit`` then searches instead of sequences."""


def _largest(request: EstimateRequest, field: str, limit: int = MAX_BATCH, allow_tight: bool = False) -> int | None:
    """Largest value of ``field`` up to ``limit`` that fits (``accepted``): doubling from 1, then bisection. None if 1
    does not fit."""

    def fits(value: int) -> bool:
        return accepted(estimate_or_none(request.model_copy(update={field: value})), allow_tight)

    if not fits(1):
        return None
    lo, hi = 1, 0  # fits at lo, not at hi (0: not found yet)
    while not hi:
        step = min(2 * lo, limit)
        if step == lo:
            return lo
        lo, hi = (step, 0) if fits(step) else (lo, step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_micro_batch_size(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The largest ``micro_batch_size`` that fits (GPU and host; TIGHT only with ``allow_tight``), or None if 1
    does not.

    The rollout batch follows the micro batch unless ``rollout_batch_size`` is set.
    """
    return _largest(request, "micro_batch_size", allow_tight=allow_tight)


def max_rollout_batch_size(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The largest ``rollout_batch_size`` (prompts per GPU per generation) that fits, the micro batch as given."""
    if request.algo not in GENERATES:
        raise InputError("algo", f"{request.algo!r} generates no rollouts; use max_micro_batch_size", request.algo)
    return _largest(request, "rollout_batch_size", allow_tight=allow_tight)


def scored_sequences(request: EstimateRequest) -> int:
    """The sequences one GPU scores per step, the most a scoring micro batch holds: rollout prompts × group
    size (DPO: the micro batch's pairs), as ``resolve`` counts them. ``InputError`` where nothing is scored in
    micro batches."""
    if request.algo == "sft":
        raise InputError("algo", "SFT has no scoring phase", request.algo)
    run = resolve(request.model_copy(update={"score_micro_batch_size": None}))
    if run.algo == "dpo":
        return run.train_seqs // 2  # chosen + rejected of each pair
    if run.rollout_engine == "hybrid-engine" and run.placement == "colocated":
        raise InputError("rollout_engine", "DeepSpeed-Chat's hybrid engine scores each generation batch whole: "
                         "use max_rollout_batch_size", request.rollout_engine)
    return run.rollout_seqs


def max_score_micro_batch_size(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The largest ``score_micro_batch_size`` that fits, at most ``scored_sequences``, the other batches as
    given (verl's ``log_prob_micro_batch_size_per_gpu``); None if 1 does not fit."""
    return _largest(request, "score_micro_batch_size", scored_sequences(request), allow_tight)



class LimitReport(BaseModel):
    """One limit (``--max-batch``, ``--max-rollout-batch``, ``--min-gpus``), the estimate at it, and the
    estimate one step past it, which does not fit."""

    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    search: Literal["max_micro_batch_size", "max_rollout_batch_size", "max_score_micro_batch_size", "min_gpus",
                    "max_max_tokens_per_gpu", "max_score_max_tokens_per_gpu"]
    max_micro_batch_size: int | None = Field(None, description="Largest micro batch per GPU that fits")
    max_rollout_batch_size: int | None = Field(None, description="Largest rollout batch per GPU that fits")
    max_score_micro_batch_size: int | None = Field(
        None, description="Largest scoring micro batch per GPU that fits, at most the sequences a GPU scores")
    max_max_tokens_per_gpu: int | None = Field(
        None, description="Largest token cap of a training micro batch per GPU that fits: the answer to the largest "
        "micro batch when the run sizes its micro batches by tokens (max_tokens_per_gpu given), at most the tokens "
        "a GPU trains in a step")
    max_score_max_tokens_per_gpu: int | None = Field(
        None, description="Largest token cap of a scoring forward per GPU that fits (score_max_tokens_per_gpu, or "
        "max_tokens_per_gpu, given), at most the tokens a GPU scores in a step")
    min_gpus: int | None = Field(None, description="Fewest GPUs of the request's kind that fit (and, with "
                                 "time_budget_seconds, finish the data set within it)")
    time_budget_seconds: float | None = Field(None, description="min_gpus: the wall-time budget for the data set "
                                              "(memplan.step_time's estimate), if given")
    found: bool = Field(description="False: even the smallest batch (or the largest cluster) does not fit")
    allow_tight: bool = Field(False, description="TIGHT configurations whose point estimate fits were accepted")
    at_limit: PlanCandidate | None = Field(None, description="The request at the limit (fits)")
    past_limit: PlanCandidate | None = Field(
        None, description="One step past the limit: one more sequence, or the next smaller GPU count (does not "
        "fit); None where there is no such step (the scoring micro batch at every sequence a GPU scores)")
    elapsed_ms: float


def _limit_candidate(given: EstimateRequest, field: str, value: Any) -> PlanCandidate | None:
    report = estimate_or_none(given.model_copy(update={field: value}))
    return None if report is None else to_candidate(given, report)


def _token_field(request: EstimateRequest, field: str) -> str | None:
    """The token cap ``batch_limit`` searches for ``field`` when the request sizes that micro batch by tokens."""
    cap = TOKEN_FIELDS.get(field)
    if cap is None or request.max_tokens_per_gpu is None and (
            cap == "max_tokens_per_gpu" or request.score_max_tokens_per_gpu is None):
        return None
    return cap


def _step_tokens(request: EstimateRequest) -> int:
    """Tokens one GPU trains or scores in a step (rollout sequences at their mean length, over the sequence-parallel
    group's GPUs): a larger cap changes nothing (``tokens.micro_batch``)."""
    run = resolve(request)
    if not run.rollout_seqs:
        return MAX_TOKENS * 64  # the fields' bound
    mean = run.prompt_len + (request.gen_len_mean or run.gen_len)
    return min(max(run.rollout_seqs * mean, -(-run.train_seq_len // run.sp)), MAX_TOKENS * 64)


def batch_limit(request: EstimateRequest, field: str = "micro_batch_size", *,
                allow_tight: bool = False) -> LimitReport:
    """``max_micro_batch_size`` (or ``max_rollout_batch_size``, ``max_score_micro_batch_size``) with the
    estimates at it and at one more."""
    start = time.perf_counter()
    if field not in BATCH_FIELDS:
        raise InputError("field", f"must be one of {', '.join(BATCH_FIELDS)}", field)
    if field == "rollout_batch_size" and request.algo not in GENERATES:  # before the options it then refuses
        raise InputError("algo", f"{request.algo!r} generates no rollouts; use max_micro_batch_size", request.algo)
    if field == "score_micro_batch_size" and request.algo == "sft":
        raise InputError("algo", "SFT has no scoring phase", request.algo)
    estimate(request)  # bad input raises here, naming its field
    tokens = _token_field(request, field)
    if tokens is not None:  # the framework's unit: tokens per GPU
        field, limit = tokens, _step_tokens(request)
        if tokens == "score_max_tokens_per_gpu" and request.score_max_tokens_per_gpu is None:
            request = request.model_copy(update={tokens: request.max_tokens_per_gpu})
    elif field == "score_micro_batch_size":
        limit = scored_sequences(request)
    else:
        limit = MAX_BATCH
    n = _largest(request, field, limit, allow_tight)
    past = (n or 0) + 1
    return LimitReport(
        request=request, search=f"max_{field}", **{f"max_{field}": n}, found=n is not None, allow_tight=allow_tight,
        at_limit=_limit_candidate(request, field, n) if n else None,
        past_limit=_limit_candidate(request, field, past) if past <= limit else None,
        elapsed_ms=round((time.perf_counter() - start) * 1e3, 3),
    )

