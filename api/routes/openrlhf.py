"""POST /v1/openrlhf/estimate: an OpenRLHF launch command, read into a request (``memplan.frameworks.openrlhf``)
and estimated."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import body_fields, check_names, models_in
from api.schemas import OpenRLHFEstimate, OpenRLHFScript
from memplan import estimate
from memplan.frameworks import openrlhf
from memplan.report import EstimateRequest

router = APIRouter(prefix="/v1/openrlhf", tags=["openrlhf"])


@router.post("/estimate", response_model=OpenRLHFEstimate, summary="Estimate an OpenRLHF launch command")
def openrlhf_estimate(body: OpenRLHFScript) -> OpenRLHFEstimate:
    """The command's arguments on OpenRLHF 0.11.2's defaults, on ``gpu`` GPUs (the count from the models'
    placement); the request read, the notes on what was read differently or not at all, and the report."""
    with body_fields({"openrlhf": "script", "gpus": "gpu", **models_in("script")}):
        run = openrlhf.fields(openrlhf.read(body.script), body.gpu)
        request = EstimateRequest(**run.fields)
        check_names(request)  # a path in the script is no catalog name: refused, never read
        report = estimate(request)
    return OpenRLHFEstimate(request=request, notes=run.notes, report=report)
