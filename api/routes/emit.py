"""POST /v1/emit: the launch files of a request for verl, TRL or OpenRLHF, or the cluster resources to ask for
(a Ray placement group, a SkyPilot resources block, a KubeRay worker group), as text (``memplan.emit``).

The files come back in the answer: the service never reads or writes its own disk.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import check_names
from memplan.emit import TARGETS, emit
from memplan.errors import InputError
from memplan.report import EstimateRequest

router = APIRouter(prefix="/v1", tags=["emit"])
Target = Literal["verl", "trl", "openrlhf", "ray", "skypilot", "kuberay"]
assert set(TARGETS) == set(Target.__args__)  # type: ignore[attr-defined]  # one list of targets


class EmitRequest(BaseModel):
    """POST /v1/emit: the run (an estimate's request) and what to write for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [{
        "request": {"model": "Qwen/Qwen2.5-7B", "algo": "grpo", "gpus": "8xH100-80GB", "framework": "verl"},
        "target": "verl"}]})

    request: EstimateRequest
    target: Target = Field(description="verl, trl, openrlhf (launch files, read back by memplan's reader to the "
                           "same run), or ray, skypilot, kuberay (the cluster resources)", examples=["verl"])


class EmittedFile(BaseModel):
    """One written file."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="A file name to save it under", examples=["run_verl.sh"])
    text: str = Field(description="The file's text")


class EmitResponse(BaseModel):
    """The files, how to read them back, and what to fill in."""

    model_config = ConfigDict(frozen=True)

    target: Target
    files: list[EmittedFile] = Field(description="One file; TRL: the recipe, then accelerate's config")
    read_back: str = Field(description="The memplan command that reads the files back into the request (launch "
                           "files), or where the numbers come from (resources)")
    notes: list[str] = Field(description="What to fill in, and what the files do not say")


@router.post("/emit", response_model=EmitResponse, summary="Launch files or cluster resources for a run")
def emit_files(body: EmitRequest) -> EmitResponse:
    """``body.request``'s launch files in the framework's current argument names (a setting the framework cannot
    carry is a 422 naming the field), or the resources its report asks for per node."""
    try:
        check_names(body.request)  # a path is no catalog name: refused, never read
        emitted = emit(body.request, body.target)
    except InputError as err:  # about the run: located at request.<field>, as /v1/plan does
        if err.field.split(".")[0] in EstimateRequest.model_fields:
            message = str(err).removeprefix(f"{err.field}: ")
            raise type(err)(f"request.{err.field}", message, err.value) from None
        raise
    return EmitResponse(target=body.target, files=[EmittedFile(name=f.name, text=f.text) for f in emitted.files],
                        read_back=emitted.read_back, notes=list(emitted.notes))
