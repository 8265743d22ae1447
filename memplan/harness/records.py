"""What the measurement harness returns: a traced run (tier 2) and a CUDA measurement (tier 3).

These are pydantic models because they cross the edges (CLI ``--json``, records on disk under
``benchmarks/results/``). They import no torch, so the CLI and the estimator's regression tests can read
records on a machine without it.

* ``TraceReport`` — ``memplan.harness.trace(request)``: the peak of live tensor bytes of one traced process
  (rank 0), per phase, with the breakdown at each phase's peak by category (``Breakdown``) and by role
  (``LineItem(role, category, bytes)``).
* ``CudaRecord`` — ``memplan.harness.measure(request, backend="cuda")``: ``torch.cuda`` allocated/reserved
  peaks and NVML used memory per phase, plus the environment, the estimate and the traced peak of the day.
* ``MeasuredPoint`` — one measured quantity of one real run from any source (a public repository or page, a
  user's GPU, ``memplan measure``: ``records_from_cuda``), with its source, settings, device, the phases it
  covers and the request that reproduces it; the corpus under benchmarks/corpus/ (``memplan validate``).
"""

from __future__ import annotations

from typing import Literal

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


# --- Measured points: one kind of record for a public page, a user's GPU run and ``memplan measure`` ---------

Quantity = Literal["nvml_device_peak", "torch_max_allocated", "torch_max_reserved", "outcome"]
Outcome = Literal["ran", "oom"]
SourceKind = Literal["public", "user", "memplan-measure"]


class Source(BaseModel):
    """Where a measured point comes from: enough to fetch the raw data again and check it byte for byte."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SourceKind = Field(description="A public page or repository, a user's own GPU run, or `memplan measure`")
    url: str = Field(description="Repository, issue thread or page the point was read from")
    commit: str | None = Field(None, description="Git commit of the repository snapshot the raw data was read at")
    path: str | None = Field(None, description="File inside the repository (or anchor on the page)")
    sha: str | None = Field(None, description="Git blob sha of that raw file at that commit (or sha256 of a page)")
    measured_at_commit: str | None = Field(
        None, description="The commit that last changed the measured data (what harness version produced it)"
    )
    locator: str = Field("", description="Which entry of the raw file this point is, e.g. 'measured[17]'")


class MeasuredDevice(BaseModel):
    """The device the run measured, as the run reported it (not memplan's catalog figure)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="As torch/NVML named it, e.g. 'NVIDIA A100-SXM4-40GB'")
    total_bytes: int | None = Field(None, description="Total memory as the run reported it (torch total_memory)")
    count: int = Field(1, ge=1, description="GPUs the run used")
    catalog_gpu: str | None = Field(None, description="memplan's catalog name for this device, e.g. 'A100-40GB'")
    nvml_total_bytes: int | None = Field(
        None, description="NVML's v1 total (physical device memory) where the run's NVML readings are v1 'used', "
                          "which counts the driver's reserve; that reserve, NVML's total − torch's total, lies "
                          "outside torch's total_memory and is netted out before comparing (memplan.validate)")


class MeasuredPoint(BaseModel):
    """One measured quantity of one run: a phase's peak in bytes, or only whether the run fit (ran / OOM).

    What compares to which estimate (``memplan.validate``):

    * ``nvml_device_peak`` — NVML device memory used: the CUDA context, the caching allocator's reserve and
      whatever the process and a colocated engine hold outside torch. Compared to the phase's total per GPU,
      fixed bytes included.
    * ``torch_max_allocated`` / ``torch_max_reserved`` — torch's caching allocator only: no CUDA context, no
      NCCL buffers. Compared to the phase's total net of ``Report.fixed_bytes`` (as tests/test_records.py does).
    * ``outcome`` — only 'ran' or 'oom': compared to the estimate's verdict (fits / does not fit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique within the corpus: source, point and phase")
    point: str = Field(description="The run this measurement belongs to (records of one run share it)")
    source: Source
    framework: str = Field(description="What ran the step, e.g. 'agilerl'")
    framework_version: str
    versions: dict[str, str] = Field(default_factory=dict, description="torch, transformers, peft, vllm, ...")
    settings: dict[str, str | int | float | bool | None] = Field(
        description="Every memory-relevant setting, named as the source names it"
    )
    device: MeasuredDevice
    quantity: Quantity
    phases: tuple[Phase, ...] = Field(
        description="memplan phases the measurement window covers; the estimate compared is their largest"
    )
    source_phase: str = Field(description="The phase as the source names it, e.g. 'training'")
    measured_bytes: int | None = Field(None, description="The measured peak (None for an outcome-only point)")
    outcome: Outcome | None = Field(None, description="Whether the run went through ('ran') or ran out of memory")
    allocator_slack_bytes: int | None = Field(
        None, description="torch's max_memory_reserved − max_memory_allocated over the same window, where the source "
                          "recorded both: the caching allocator's reserve beyond live tensors at the peak (each is "
                          "the window's maximum, so this is exact only where they peak together), which an NVML peak "
                          "includes and memplan's estimate (live tensors) does not")
    before_first_optimizer_step: bool = Field(
        False, description="The window closed before the run's first optimizer step: no optimizer states existed "
                           "yet (torch's AdamW creates them lazily in its first step()), where memplan's phases are "
                           "the steady state")
    raw: dict[str, int | float | str | bool | None] = Field(
        default_factory=dict, description="The source's own fields for this point, verbatim"
    )
    request: EstimateRequest | None = Field(None, description="The memplan request that reproduces the run")
    unexpressible: str | None = Field(
        None, description="Why no request can reproduce the run today (set by the converter; None otherwise)"
    )
    assumptions: list[str] = Field(default_factory=list, description="Each choice made to map the settings")
    notes: list[str] = Field(default_factory=list, description="Caveats about the measurement itself")


def records_from_cuda(record: CudaRecord, path: str) -> list[MeasuredPoint]:
    """A ``memplan measure`` CudaRecord as measured points: torch's allocated peak per phase, and NVML's when
    the record has it (NVML used at the phase's end minus the baseline, so compared like torch's counters)."""
    versions = {"torch": record.torch_version, "transformers": record.transformers_version, "cuda": record.cuda,
                "driver": record.driver}
    if record.peft_version:
        versions["peft"] = record.peft_version
    device = MeasuredDevice(name=record.gpu_name, total_bytes=record.gpu_total_bytes, count=record.world_size,
                            catalog_gpu=None)
    source = Source(kind="memplan-measure", url="benchmarks/results/cuda", path=path)
    stem = path.rsplit("/", 1)[-1].removesuffix(".json")
    out = []
    for ph in record.phases:
        out.append(MeasuredPoint(
            id=f"{stem}/{ph.phase}/allocated", point=stem, source=source, framework="memplan-measure",
            framework_version="", versions=versions, settings={}, device=device, quantity="torch_max_allocated",
            phases=(ph.phase,), source_phase=ph.phase, measured_bytes=ph.max_allocated_bytes, outcome="ran",
            raw=ph.model_dump(), request=record.request, notes=list(record.notes)))
    return out
