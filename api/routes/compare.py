"""POST /v1/compare: several algorithms or configurations side by side."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import check_names
from api.schemas import CompareRequest
from memplan.comparison import ComparedReport, compare_reports, compared_algos, ppo_of

router = APIRouter(prefix="/v1", tags=["compare"])


@router.post("/compare", response_model=list[ComparedReport], summary="Compare algorithms or configurations")
async def compare(body: CompareRequest) -> list[ComparedReport]:
    """One report per request, in order: explicit ``requests``, or ``base`` under each of ``algos`` (unset: ppo,
    grpo, remax, rloo, dpo, cut to those ``base``'s framework runs); each with its estimated ``step_time`` and
    ``speed_vs_ppo`` (PPO's seconds per prompt ÷ this run's: PPO of ``base``, or PPO with each explicit request's
    own knobs; None under a framework without PPO)."""
    requests = body.expand()
    for request in requests:
        check_names(request)
    base = None if body.base is None else ppo_of(body.base)  # as `memplan compare`
    reports = compare_reports(requests, base)
    cut = [] if body.base is None else compared_algos(body.base, body.algos)[1]  # the default list cut: say so
    return [r.model_copy(update={"notes": (*r.notes, *cut)}) for r in reports] if cut else reports
