"""POST /v1/estimate: the per-GPU peak of one run, phase by phase, and whether it fits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from api.deps import estimate_json
from api.schemas import ESTIMATE_EXAMPLES
from memplan.report import EstimateRequest, Report

router = APIRouter(prefix="/v1", tags=["estimate"])


@router.post("/estimate", response_model=Report, summary="Estimate peak memory per GPU")
async def estimate(request: Annotated[EstimateRequest, Body(openapi_examples=ESTIMATE_EXAMPLES)]) -> Response:
    """The report for one planned run. Models by catalog name (GET /v1/models) or inline architecture."""
    # The estimate is microseconds of pure CPU work: run it on the event loop, no thread hop. The
    # report is already JSON (cached by request), so skip FastAPI's re-validation of the response.
    return Response(estimate_json(request), media_type="application/json")
