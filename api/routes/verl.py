"""POST /v1/verl/estimate: a verl launch script, read into a request (``memplan.frameworks.verl``) and estimated."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import body_fields, check_names, models_in
from api.schemas import VerlEstimate, VerlScript
from memplan import estimate
from memplan.frameworks import verl
from memplan.report import EstimateRequest

router = APIRouter(prefix="/v1/verl", tags=["verl"])


@router.post("/estimate", response_model=VerlEstimate, summary="Estimate a verl launch script")
def verl_estimate(body: VerlScript) -> VerlEstimate:
    """The script's Hydra overrides on verl's defaults, on ``gpu`` GPUs (the count is the script's); the
    request read, the notes on what was read differently or not at all, and the report."""
    with body_fields({"verl": "script", "gpus": "gpu", **models_in("script")}):
        run = verl.fields(verl.read(body.script), body.gpu)
        request = EstimateRequest(**run.fields)
        check_names(request)  # a path in the script is no catalog name: refused, never read
        report = estimate(request)
    return VerlEstimate(request=request, notes=run.notes, report=report)
