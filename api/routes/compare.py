"""POST /v1/compare: several algorithms or configurations side by side."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import check_names
from api.schemas import CompareRequest
from memplan.estimator import for_algorithm
from memplan.comparison import ComparedReport, compare_reports

router = APIRouter(prefix="/v1", tags=["compare"])


@router.post("/compare", response_model=list[ComparedReport], summary="Compare algorithms or configurations")
async def compare(body: CompareRequest) -> list[ComparedReport]:
    """One report per request, in order: explicit ``requests``, or ``base`` under each of ``algos``; each with
    its estimated ``step_time`` and ``speed_vs_ppo`` (PPO's seconds per prompt ÷ this run's: PPO of ``base``, or
    PPO with each explicit request's own knobs)."""
    requests = body.expand()
    for request in requests:
        check_names(request)
    base = None if body.base is None else for_algorithm(body.base, "ppo")  # as `memplan compare`
    return compare_reports(requests, base)
