"""POST /v1/deepspeed-chat/estimate: a DeepSpeed-Chat step-3 launch command, read into a request
(``memplan.frameworks.dschat``) and estimated."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import body_fields, check_names, models_in
from api.schemas import DsChatEstimate, DsChatScript
from memplan import estimate
from memplan.errors import InputError
from memplan.frameworks import dschat
from memplan.report import EstimateRequest

router = APIRouter(prefix="/v1/deepspeed-chat", tags=["deepspeed-chat"])


@router.post("/estimate", response_model=DsChatEstimate, summary="Estimate a DeepSpeed-Chat launch command")
def dschat_estimate(body: DsChatScript) -> DsChatEstimate:
    """The command's arguments on step 3's defaults (main.py's parse_args), on the ``gpus`` cluster; the request
    read, the notes on what was read differently or not at all, and the report. The text only: a path is never
    read (``dschat.read`` takes the arguments; ``check_names`` refuses model paths)."""
    with body_fields({dschat.FIELD: "script", **models_in("script")}):
        if not body.gpus.strip()[:1].isdigit():
            raise InputError("gpus", "name the cluster with its count (the deepspeed launcher runs one process per "
                             "GPU; the command holds no count), e.g. 8xA100-80GB", body.gpus)
        run = dschat.fields(dschat.read(body.script), body.gpus, body.algo)
        request = EstimateRequest(**run.fields)
        check_names(request)  # a path in the command is no catalog name: refused, never read
        report = estimate(request)
    return DsChatEstimate(request=request, notes=run.notes, report=report)
