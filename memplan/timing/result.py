"""The time report: frozen pydantic models, so the CLI (``--json``), the REST service and, later, the memory
report (``Report``), ``compare`` and the planner can carry a ``StepTime`` as it is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Bound = Literal["compute", "hbm", "launch", "nvlink", "network", "pcie", "host"]
TimePhase = Literal["rollout", "scoring", "actor_update", "critic_update"]


class TimeItem(BaseModel):
    """One block of a phase: the work of one role that runs as a whole (overlapped terms take the longest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    what: str = Field(description="What runs, e.g. 'decode 256 tokens × 30 sequences'")
    seconds: float
    bound: Bound = Field(description="The term that sets the block's time")


class PhaseTime(BaseModel):
    """Seconds of one phase of a step, per GPU (every GPU runs the same phase at once)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: TimePhase
    seconds: float
    share: float = Field(description="Fraction of the step")
    items: tuple[TimeItem, ...]
    tokens: str | None = Field(None, description="Which tokens and lengths the phase assumed, as the memory "
                               "report's PhaseReport.tokens: padded, packed at the mean, capped, generated")


class StepTime(BaseModel):
    """Time of one training step of a run — one generation batch per GPU, scored and trained on once — and,
    for a data set, of the whole run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algo: str
    gpu: str
    num_gpus: int
    phases: tuple[PhaseTime, ...]
    seconds_per_step: float
    prompts_per_step: int = Field(description="Prompts (DPO/SFT: samples) the step consumes over all GPUs")
    tokens_per_step: int = Field(description="Tokens of the sequences trained on, over all GPUs")
    tokens_per_second_per_gpu: float
    dataset_samples: int | None = Field(None, description="Prompts (samples) in the data set, if given")
    epochs: int = 1
    steps: int | None = Field(None, description="Steps to go through the data set `epochs` times")
    wall_seconds: float | None = Field(None, description="steps × seconds_per_step")
    dominant_phase: TimePhase
    notes: tuple[str, ...] = Field((), description="What the estimate assumes or cannot see")

    @property
    def wall_hours(self) -> float | None:
        return None if self.wall_seconds is None else self.wall_seconds / 3600
