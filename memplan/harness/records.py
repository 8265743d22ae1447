"""What the measurement harness returns: a traced run (tier 2) and a CUDA measurement (tier 3).

These are pydantic models because they cross the edges (CLI ``--json``, records on disk under
``benchmarks/results/``). They import no torch, so the CLI and the estimator's regression tests can read
records on a machine without it.

* ``TraceReport`` — ``memplan.harness.trace(request)``: the peak of live tensor bytes of one traced process
  (rank 0), per phase, with the breakdown at each phase's peak by category (``Breakdown``) and by role
  (``LineItem(role, category, bytes)``).
* ``CudaRecord`` — ``memplan.harness.measure(request, backend="cuda")``: ``torch.cuda`` allocated/reserved
  peaks and NVML used memory per phase, plus the environment, the estimate and the traced peak of the day.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from memplan.report import Breakdown, EstimateRequest, LineItem, Phase


class PhaseTrace(BaseModel):
    """One phase of a traced step: its peak of live bytes and what was live at that moment."""

    model_config = ConfigDict(frozen=True)

    phase: Phase
    peak_bytes: int = Field(description="Max live tensor bytes (512-byte blocks) while this phase ran")
    step: int = Field(description="Training step (1 or 2) in which this phase reached its peak")
    peak_op: str = Field("", description="The aten op whose allocation set the peak, e.g. '_foreach_sqrt'")
    breakdown: Breakdown = Field(description="Live bytes at the peak by category")
    items: list[LineItem] = Field(description="Live bytes at the peak by role and category, largest first")


class TraceReport(BaseModel):
    """A fake-tensor trace of two training steps of one request (tier 2)."""

    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    peak_bytes: int = Field(description="Peak live tensor bytes of the traced process (one GPU)")
    peak_phase: Phase
    phases: list[PhaseTrace]
    world_size: int = Field(1, description="Ranks the step was sharded over (1: every model in full)")
    seconds: float = Field(description="Wall time of the trace")
    notes: list[str] = Field(default_factory=list, description="What the trace assumed or could not see")

    def phase(self, name: Phase) -> PhaseTrace:
        """The phase called ``name`` (KeyError if the algorithm has no such phase)."""
        for p in self.phases:
            if p.phase == name:
                return p
        raise KeyError(name)


class MeasuredPhase(BaseModel):
    """One phase measured on a CUDA device (peaks over both training steps)."""

    model_config = ConfigDict(frozen=True)

    phase: Phase
    max_allocated_bytes: int = Field(description="torch.cuda.max_memory_allocated during the phase")
    max_reserved_bytes: int = Field(description="torch.cuda.max_memory_reserved during the phase")
    nvml_used_bytes: int | None = Field(
        None, description="NVML used memory at the phase's end minus the baseline before the run"
    )


class CudaRecord(BaseModel):
    """One measured run on a CUDA device (tier 3), as committed under benchmarks/results/cuda/."""

    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    peak_nvml_bytes: int | None = None
    peak_phase: Phase
    phases: list[MeasuredPhase]
    estimate_peak_bytes: int | None = Field(None, description="memplan.estimate(request).peak_bytes_per_gpu that day")
    traced_peak_bytes: int | None = Field(None, description="trace(request).peak_bytes that day")
    baseline_nvml_bytes: int | None = Field(None, description="NVML used memory before the run (context, others)")
    rank: int = 0
    world_size: int = 1
    gpu_name: str
    gpu_total_bytes: int
    driver: str
    cuda: str
    torch_version: str
    transformers_version: str
    peft_version: str | None = None
    date: str = Field(description="UTC, ISO 8601")
    seconds: float
    notes: list[str] = Field(default_factory=list)
