"""POST /v1/time: seconds per step of one run, phase by phase, and the wall time for a data set."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import Field, StrictInt

from api.deps import check_names
from api.schemas import ESTIMATE_EXAMPLES
from memplan.report import EstimateRequest
from memplan.timing import StepTime, step_time

router = APIRouter(prefix="/v1", tags=["time"])


class TimeRequest(EstimateRequest):
    """An estimate request (the same fields as POST /v1/estimate) and, optionally, the data set's size."""

    dataset_samples: StrictInt | None = Field(
        None, ge=1, le=1 << 40, description="Prompts (DPO/SFT: samples) in the data set: adds steps and wall time",
        examples=[45000])
    epochs: StrictInt = Field(1, ge=1, le=10_000, description="Passes over the data set")


EXAMPLES = {name: {**example, "value": {**example["value"], "dataset_samples": 45000}}
            for name, example in ESTIMATE_EXAMPLES.items()}


@router.post("/time", response_model=StepTime, summary="Estimate the time per step and for a data set")
async def time(body: Annotated[TimeRequest, Body(openapi_examples=EXAMPLES)]) -> StepTime:
    """Seconds per phase and per step, tokens per second per GPU, and — given ``dataset_samples`` — the steps and
    wall time. Bad input is a 422 naming the field, as for /v1/estimate."""
    fields = body.model_dump(exclude={"dataset_samples", "epochs"}, exclude_unset=True)
    request = EstimateRequest.model_validate(fields)
    check_names(request)  # a catalog name or an inline architecture, as every route: never a path
    return step_time(request, dataset_samples=body.dataset_samples, epochs=body.epochs)
