"""POST /v1/plan: configurations that fit, best first by ``objective``; /max-batch and /min-gpus: one limit each.

The searches run hundreds of estimates (tens to hundreds of milliseconds of pure CPU work), so these routes
are plain ``def``: FastAPI runs them in its thread pool and the event loop keeps answering /v1/estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import APIRouter

from api.deps import check_names
from api.schemas import BatchLimitRequest, GpuLimitRequest, PlanRequest
from memplan.errors import InputError
from memplan.planner import LimitReport, PlanReport, batch_limit, gpu_limit, plan as plan_search
from memplan.report import EstimateRequest

router = APIRouter(prefix="/v1/plan", tags=["plan"])


@contextmanager
def _in_request() -> Iterator[None]:
    """An error about a request field is about ``request.<field>`` of these bodies (422 ``loc``)."""
    try:
        yield
    except InputError as err:
        if err.field.split(".")[0] not in EstimateRequest.model_fields:
            raise
        message = str(err).removeprefix(f"{err.field}: ")
        raise type(err)(f"request.{err.field}", message, err.value) from None


def _run(search: Callable, request: EstimateRequest, *args, **kwargs):
    with _in_request():
        check_names(request)
        return search(request, *args, **kwargs)


@router.post("", response_model=PlanReport, summary="What to change so the run fits")
def plan(body: PlanRequest) -> PlanReport:
    """The knobs in ``allow`` (default: all) searched for configurations that fit (GPU memory and host RAM, the
    verdict FITS; TIGHT too, its point estimate fitting, with ``allow_tight``), best first by ``objective`` (estimated
    time per prompt, GPU count or GPU-hours; ``cost_order`` breaks ties); each with its peak, headroom, estimated
    seconds per step (and, with ``dataset_samples``, wall time and GPU-hours; with ``price_per_gpu_hour``, price)
    and the changes from the request. When nothing fits, ``fits_any`` is false and the one candidate is the closest (smallest peak) found."""
    allow = None if body.allow is None else set(body.allow)
    return _run(plan_search, body.request, allow=allow, max_results=body.max_results,
                allow_tight=body.allow_tight, objective=body.objective, dataset_samples=body.dataset_samples,
                price_per_gpu_hour=body.price_per_gpu_hour)


@router.post("/max-batch", response_model=LimitReport, summary="Largest batch per GPU that fits")
def max_batch(body: BatchLimitRequest) -> LimitReport:
    """``max_micro_batch_size`` (or ``max_rollout_batch_size``, ``max_score_micro_batch_size``), with the estimates
    at it and at one more; in tokens per GPU (``max_max_tokens_per_gpu``, ``max_score_max_tokens_per_gpu``) when the
    request caps that micro batch by tokens (``max_tokens_per_gpu``, ``score_max_tokens_per_gpu``)."""
    return _run(batch_limit, body.request, body.field, allow_tight=body.allow_tight)


@router.post("/min-gpus", response_model=LimitReport, summary="Fewest GPUs that fit")
def min_gpus(body: GpuLimitRequest) -> LimitReport:
    """``min_gpus`` of the request's GPU kind, with the estimates at it and at the next smaller count; with
    ``time_budget_seconds`` and ``dataset_samples``, the fewest that also finish the data set within the budget."""
    if body.time_budget_seconds is not None and body.dataset_samples is None:
        raise InputError("dataset_samples", "is needed with time_budget_seconds", None)
    return _run(gpu_limit, body.request, allow_tight=body.allow_tight, time_budget_seconds=body.time_budget_seconds,
                dataset_samples=body.dataset_samples)
