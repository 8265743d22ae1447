"""POST /v1/estimate: the per-GPU peak of one run, phase by phase, and whether it fits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from api.deps import estimate_json
from api.schemas import ESTIMATE_EXAMPLES
from memplan.comparison import timed
from memplan.report import EstimateRequest, Report

router = APIRouter(prefix="/v1", tags=["estimate"])


TIME_HELP = ("Add `time`: memplan.step_time of the same request (seconds per step and per phase, tokens/s per "
             "GPU; null when the GPU has no performance figures). Off by default: it costs ~0.3 ms against the "
             "cached estimate's microseconds (docs/time.md)")


@router.post("/estimate", response_model=Report, summary="Estimate peak memory per GPU")
async def estimate(request: Annotated[EstimateRequest, Body(openapi_examples=ESTIMATE_EXAMPLES)],
                   time: Annotated[bool, Query(description=TIME_HELP)] = False) -> Response:
    """The report for one planned run. Models by catalog name (GET /v1/models) or inline architecture. With
    ``?time=true`` the report gains a ``time`` object (a ``StepTime``, as POST /v1/time returns)."""
    # The estimate is microseconds of pure CPU work: run it on the event loop, no thread hop. The
    # report is already JSON (cached by request), so skip FastAPI's re-validation of the response.
    body = estimate_json(request)
    if time:
        result = timed(request)
        extra = b"null" if result is None else result.model_dump_json().encode()
        body = body.rstrip()[:-1] + b',"time":' + extra + b"}"  # the report is one JSON object
    return Response(body, media_type="application/json")
