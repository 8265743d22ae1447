"""Tier 2: trace two training steps under fake tensors and count live bytes per phase — no GPU, any size.

The models are built on the meta device from their configs and their weights replaced by fake CPU tensors
(``models.materialize_fake``); the step recipe then runs under ``FakeTensorMode`` with the ``LiveBytes``
counter inside it, so every op computes shapes only while the counter sees every storage come and go.
Fake tensors live on the fake **cpu** device: fake ``cuda`` tensors abort the process in backward on a
machine without a GPU (../shared/REFERENCE.md). On CPU, SDPA dispatches to the CPU flash kernel, which keeps
what CUDA flash attention keeps (the output and an fp32 log-sum-exp, no s×s scores). Packed micro batches
(``EstimateRequest.packing``, or ``trace_request(..., pack=lengths)``) run as one [1, T] row through a varlen
attention stand-in with flash-attn's allocations (``packing.py``).

The same function runs on real CPU tensors (``fake=False``) for tiny models: the test that holds the
counter to a real run.

What a trace does not see: the CUDA context, cuBLAS/cuDNN workspaces, kernel scratch memory, allocator
fragmentation (reserved − allocated), NCCL buffers. ``optimizer_impl='foreach'`` on CUDA keeps AdamW's
``step`` counters on the host; the trace counts them on the device (512 bytes per parameter tensor).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from memplan.harness.counter import CATEGORIES, LiveBytes
from memplan.harness.models import build_models
from memplan.harness.records import PhaseTrace, TraceReport
from memplan.harness.setup import Setup, resolve
from memplan.harness.steps import Probe, run_steps
from memplan.report import Breakdown, EstimateRequest, LineItem

DECODE_STEPS = 2
"""Decode steps traced for real at each end of the answer; the cache jumps over the middle (see common)."""


class CountingProbe(Probe):
    """The probe of a traced run: forwards phases, sections and labels to a ``LiveBytes`` counter."""

    def __init__(self, counter: LiveBytes) -> None:
        self.counter = counter

    def phase(self, name: str, step: int):  # noqa: ANN201
        return self.counter.in_phase(name, step)

    def section(self, role: str | None = None, category: str | None = None, host: bool | None = None):  # noqa: ANN201
        return self.counter.section(role, category, host)

    def track(self, tensor: torch.Tensor, role: str, category: str) -> None:
        self.counter.track(tensor, role, category)

    def relabel(self, tensor: torch.Tensor | None, role: str, category: str) -> None:
        self.counter.relabel(tensor, role, category)

    def tag_grad(self, tensor: torch.Tensor, role: str, category: str) -> None:
        counter = self.counter

        def hook(grad: torch.Tensor) -> None:
            counter.relabel(grad, role, category)

        tensor.register_hook(hook)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers warns about training flags it cannot check on fake tensors; keep the output clean."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)


@contextlib.contextmanager
def unpacked_sequences() -> Iterator[None]:
    """Tell transformers our rows are never packed sequences.

    Without an attention mask, transformers checks the position ids for packed sequences and, when it cannot
    read their values (fake tensors count as tracing), materialises a b·s² boolean mask and passes it to
    SDPA. A real run reads the values, finds no packing and uses ``is_causal`` with no mask; this makes the
    trace take the same path.
    """
    from transformers import masking_utils

    saved = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = saved


_quiet, _unpacked_sequences = quiet, unpacked_sequences  # the names memplan.harness.sharded imports


def run_counted(setup: Setup, *, fake: bool = True, steps: int = 2, decode_steps: int | None = DECODE_STEPS,
                seed: int = 0) -> LiveBytes:
    """Run ``steps`` training steps of ``setup`` under the counter; returns the counter with its peaks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(seed)
    counter = LiveBytes()
    probe = CountingProbe(counter)
    fake_mode = FakeTensorMode() if fake else None
    with quiet(), unpacked_sequences():
        models = build_models(setup, "cpu", fake_mode)
        with fake_mode or contextlib.nullcontext(), counter:
            run_steps(setup, models, probe, device="cpu", steps=steps, decode_steps=decode_steps)
    return counter


def report(request: EstimateRequest, setup: Setup, counter: LiveBytes, seconds: float) -> TraceReport:
    """The ``TraceReport`` of a finished counted run."""
    phases = []
    for name in setup.phases:
        peak = counter.peaks[name]
        totals = counter.breakdown(peak.live)
        by_category = dict.fromkeys(CATEGORIES, 0)
        for (_role, category), nbytes in totals.items():
            by_category[category] += nbytes
        breakdown = Breakdown(**by_category)
        assert breakdown.total == peak.peak_bytes, (name, breakdown.total, peak.peak_bytes)
        items = [LineItem(role=role, category=category, bytes=nbytes)
                 for (role, category), nbytes in sorted(totals.items(), key=lambda kv: -kv[1]) if nbytes]
        phases.append(PhaseTrace(phase=name, peak_bytes=peak.peak_bytes, step=peak.step, peak_op=peak.op,
                                 breakdown=breakdown, items=items))
    top = max(phases, key=lambda p: p.peak_bytes)
    notes = [*setup.notes, "a trace counts tensors only: add the CUDA context, workspaces and fragmentation"]
    return TraceReport(request=request, peak_bytes=top.peak_bytes, peak_phase=top.phase, phases=phases,
                       world_size=1, seconds=round(seconds, 3), notes=notes)


def trace_request(request: EstimateRequest, *, decode_steps: int | None = DECODE_STEPS,
                  pack: tuple[int, ...] | None = None) -> TraceReport:
    """Trace two training steps of ``request`` on fake tensors (world size 1); ``pack``: the token lengths of the
    sequences of every packed micro batch (``setup.resolve``), instead of the request's."""
    start = time.perf_counter()
    setup = resolve(request, pack=pack)
    counter = run_counted(setup, fake=True, decode_steps=decode_steps)
    return report(request, setup, counter, time.perf_counter() - start)
