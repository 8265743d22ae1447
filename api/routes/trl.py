"""POST /v1/trl/estimate: a TRL recipe and accelerate config, read into a request (``memplan.frameworks.trl``)
and estimated."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import body_fields, check_names, models_in
from api.schemas import TrlEstimate, TrlRecipe
from memplan import estimate
from memplan.frameworks import trl
from memplan.report import EstimateRequest

router = APIRouter(prefix="/v1/trl", tags=["trl"])


@router.post("/estimate", response_model=TrlEstimate, summary="Estimate a TRL recipe (GRPO, RLOO, DPO, SFT)")
def trl_estimate(body: TrlRecipe) -> TrlEstimate:
    """The recipe's settings on TRL 1.16's defaults, the accelerate config's engine and GPU count, on ``gpu``
    GPUs; the request read, the notes on what was read differently or not at all, and the report."""
    given = frozenset({"prompt_len"}) if body.prompt_len is not None else frozenset()
    with body_fields({"trl": "recipe", "gpus": "gpu", **models_in("recipe")}):
        accelerate = trl.read_accelerate(body.accelerate_config) if body.accelerate_config is not None else None
        run = trl.fields(trl.read(body.recipe), accelerate, body.gpu, body.algo, given)
        fields = run.fields if body.prompt_len is None else {**run.fields, "prompt_len": body.prompt_len}
        request = EstimateRequest(**fields)
        check_names(request)  # a path in the script is no catalog name: refused, never read
        report = estimate(request)
    return TrlEstimate(request=request, notes=run.notes, report=report)
