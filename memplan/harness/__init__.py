"""Measurement harness (tiers 2 and 3): the same step recipes, traced under fake tensors or run on CUDA.

* ``trace(request)`` — tier 2: two training steps under ``FakeTensorMode`` on the CPU, live tensor bytes
  counted at every allocation (``fake.py``); seconds at any model size, no GPU.
* ``measure(request, backend="fake" | "cuda")`` — one harness for both (STYLE.md item 9): ``"fake"`` is
  ``trace``; ``"cuda"`` runs the same recipes on a CUDA device and returns a ``CudaRecord`` with
  ``torch.cuda`` and NVML peaks per phase (``cuda.py``), written under benchmarks/results/cuda/.

* ``trace_sharded(request, world_size=N)`` — tier 2, sharded: rank 0 of an N-rank PyTorch FSDP2 run
  (``fully_shard`` per decoder layer and root, ``engine='fsdp'``, ``zero_stage`` 2 or 3) under fake tensors
  and torch's fake process group (``sharded.py``); N defaults to the request's GPU count.

Packed micro batches (``packing``, ``max_tokens_per_gpu``, …: verl's remove-padding path) are traced as one
[1, T] row each, through a varlen attention stand-in (``packing.py``); the actor's entropy where ``entropy``
says (``steps/entropy.py``).

World size: ``trace`` runs one process holding every resident model in full (world size 1); requests with
ZeRO stages or more GPUs are traced at world size 1 and the report's notes say so. ``trace_sharded`` traces
what one rank of N holds under FSDP2 (``TraceReport.world_size`` = N); DeepSpeed ZeRO is not traced sharded.

torch is imported only when ``trace``/``measure`` run: ``import memplan.harness`` works without it.
"""

from __future__ import annotations

from typing import Literal

from memplan.errors import EnvironmentProblem
from memplan.harness.records import CudaRecord, MeasuredPhase, PhaseTrace, TraceReport
from memplan.report import EstimateRequest

INSTALL_HINT = "pip install torch==2.13.0 'memplan[measure]'"

__all__ = [
    "CudaRecord",
    "INSTALL_HINT",
    "MeasuredPhase",
    "PhaseTrace",
    "TraceReport",
    "measure",
    "trace",
    "trace_sharded",
]


def _request(request: EstimateRequest | None, kwargs: dict) -> EstimateRequest:
    if request is None:
        return EstimateRequest(**kwargs)
    return EstimateRequest(**{**request.model_dump(exclude_unset=True), **kwargs}) if kwargs else request


def require_torch() -> None:
    """Raise ``EnvironmentProblem`` with the install hint unless torch, transformers and peft import."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise EnvironmentProblem(
            f"tracing and measuring need torch, transformers and peft ({exc.name} is missing): {INSTALL_HINT}"
        ) from exc


def trace(request: EstimateRequest | None = None, **kwargs: object) -> TraceReport:
    """Trace two training steps of ``request`` (or ``EstimateRequest(**kwargs)``) on fake tensors.

    Returns the per-GPU peak of live tensor bytes of one process (world size 1), per phase, with the
    breakdown at each phase's peak by category and by role.
    """
    req = _request(request, kwargs)
    require_torch()
    from memplan.harness.fake import trace_request

    return trace_request(req)


def trace_sharded(request: EstimateRequest | None = None, world_size: int | None = None,
                  **kwargs: object) -> TraceReport:
    """Trace rank 0 of ``request`` (or ``EstimateRequest(**kwargs)``) run on ``world_size`` ranks with FSDP2.

    ``world_size`` defaults to the request's GPU count; the report's ``world_size`` says which was traced.
    Raises ``InputError`` naming the field for what FSDP2 tracing does not run (``engine`` other than
    'fsdp', LoRA, tensor parallelism, …); see ``memplan.harness.sharded``.
    """
    req = _request(request, kwargs)
    require_torch()
    from memplan.harness.sharded import trace_sharded as run_sharded

    return run_sharded(req, world_size)


def measure(
    request: EstimateRequest | None = None, backend: Literal["fake", "cuda"] = "fake", **kwargs: object
) -> TraceReport | CudaRecord:
    """Run the step recipes of ``request`` traced (``backend="fake"``) or on a CUDA device (``"cuda"``).

    ``"cuda"`` needs a GPU and NVML (``EnvironmentProblem`` otherwise) and writes its record under
    benchmarks/results/cuda/ (see ``memplan.harness.cuda.measure_cuda`` for the options).
    """
    req = _request(request, kwargs)
    if backend == "fake":
        return trace(req)
    if backend == "cuda":
        require_torch()
        from memplan.harness.cuda import measure_cuda

        return measure_cuda(req)
    raise ValueError(f"backend must be 'fake' or 'cuda', not {backend!r}")
