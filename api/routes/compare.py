"""POST /v1/compare: several algorithms or configurations side by side."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import estimate_reports
from api.schemas import CompareRequest
from memplan.report import Report

router = APIRouter(prefix="/v1", tags=["compare"])


@router.post("/compare", response_model=list[Report], summary="Compare algorithms or configurations")
async def compare(body: CompareRequest) -> list[Report]:
    """One report per request, in order: explicit ``requests``, or ``base`` under each of ``algos``."""
    return estimate_reports(body.expand())
