"""The estimator held to the tracer: per-phase, per-component errors of ``memplan.estimate`` against a trace.

One comparison for every consumer — tests/test_accuracy.py (CI regression), benchmarks/accuracy.py (the table
in benchmarks/results/accuracy.md) — so they cannot drift apart. The matrix of configurations lives here too.

A trace counts live tensor bytes only, so the estimate is taken net of ``report.fixed_bytes`` (CUDA context,
cuBLAS workspace, NCCL buffers: no trace can see them). Errors are (estimate − traced) / traced peak of the
phase, per component group:

* ``states`` — parameter, buffer, gradient, optimizer state: what stays between steps. Estimator and trace
  file the 16-bit gradient copies and weight buffers under different categories (DeepSpeed-style
  ``buffer`` vs torch's ``gradient``), so they are compared as one group. Exact up to 512-byte blocks.
* ``transients`` — activation, temp, kv_cache, logits, other (net of fixed): the moment-to-moment part.
  The estimator adds a phase's transients as if simultaneous; the trace sees one moment.
* ``total`` — the phase's peak.

This module imports no torch: it compares a ``TraceReport`` already made (``memplan.harness.trace``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import memplan
from memplan.harness.records import TraceReport
from memplan.report import EstimateRequest, Report

COMPONENTS: dict[str, tuple[tuple[str, ...], float]] = {
    # group → (categories, tolerance as a share of the phase's traced peak)
    "states": (("parameter", "buffer", "gradient", "optstate"), 0.01),
    "transients": (("activation", "temp", "kv_cache", "logits", "other"), 0.05),
    "total": (("total",), 0.05),
}
"""Per-component tolerances. States are closed forms (Ψ times bytes per element, 512-byte blocks): 1 %.
Transients and the total: 5 % of the phase's peak — the estimator's phase is a sum of worst moments; a
larger error means a missing or misplaced term, to be fixed in memplan/estimator/, not here."""

MEDIAN_TARGET = 0.03
"""Issue 3's acceptance target: median |error| of the phases' totals ≤ 3 %."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PhaseError:
    """One phase of one configuration: traced and estimated bytes, and the error of each component group."""

    case: str
    phase: str
    traced_bytes: int
    estimate_bytes: int
    """Estimate of the phase, net of ``fixed_bytes``."""
    errors: dict[str, float]
    """Component group → (estimate − traced) / traced peak of the phase."""
    tolerances: dict[str, float]
    """Component group → its tolerance, as a share of the traced peak."""
    peak_op: str

    @property
    def error(self) -> float:
        return self.errors["total"]

    def over_tolerance(self) -> list[str]:
        return [name for name, tol in self.tolerances.items() if abs(self.errors[name]) > tol]


def compare(case: str, traced: TraceReport, estimate: Report | None = None,
            components: dict[str, tuple[tuple[str, ...], float]] = COMPONENTS) -> list[PhaseError]:
    """Per phase of ``traced``: the estimate of the same request, net of fixed costs, and its errors per
    component group of ``components`` (group → (categories, tolerance); the sharded tests use their own)."""
    est = estimate if estimate is not None else memplan.estimate(traced.request)
    tolerances = {name: tol for name, (_cats, tol) in components.items()}
    by_phase = {p.phase: p for p in est.phases}
    rows = []
    for tp in traced.phases:
        ep = by_phase[tp.phase]
        t_cats, e_cats = tp.breakdown.model_dump(), ep.breakdown.model_dump()
        e_cats["other"] -= est.fixed_bytes
        e_cats["total"] = ep.total_bytes - est.fixed_bytes
        peak = tp.peak_bytes
        errors = {name: (sum(e_cats[c] for c in cats) - sum(t_cats[c] for c in cats)) / peak
                  for name, (cats, _tol) in components.items()}
        rows.append(PhaseError(case=case, phase=tp.phase, traced_bytes=peak, estimate_bytes=e_cats["total"],
                               errors=errors, tolerances=tolerances, peak_op=f"{tp.peak_op} (step {tp.step})"))
    return rows


def summary(rows: list[PhaseError]) -> tuple[float, float]:
    """Median and max |error| of the phases' totals."""
    errors = [abs(r.error) for r in rows]
    return statistics.median(errors), max(errors)


def table(rows: list[PhaseError]) -> str:
    """Plain-text table of ``rows`` (what the tests print); '!' marks a component over its tolerance."""
    groups = rows[0].tolerances
    head = f"{'case':30s} {'phase':14s} {'traced MiB':>11s} {'estimate MiB':>12s} " + " ".join(
        f"{name:>13s}" for name in groups)
    lines = [head]
    for r in rows:
        over = r.over_tolerance()
        cells = " ".join(f"{r.errors[name]:+12.2%}{'!' if name in over else ' '}" for name in groups)
        lines.append(f"{r.case:30s} {r.phase:14s} {r.traced_bytes / 2**20:11.1f} {r.estimate_bytes / 2**20:12.1f} "
                     f"{cells}")
    median, worst = summary(rows)
    tolerances = ", ".join(f"{name} ±{tol:.0%}" for name, tol in groups.items())
    lines.append(f"median |total error| {median:.2%}, max {worst:.2%} over {len(rows)} phases; "
                 f"tolerances (share of the phase's traced peak): {tolerances}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the matrix

BASE = dict(gpus="1xH100-80GB", prompt_len=256, gen_len=256)
"""World size 1: every resident model in full on one GPU (sharded runs: memplan.harness.sharded)."""

TINY = ("llama", "gpt2", "gpt-neox", "opt", "qwen2", "mixtral", "qwen3-moe")

CASES: dict[str, dict[str, object]] = {
    # real sizes, every algorithm, full and LoRA, gradient checkpointing on and off, sdpa and eager
    "ppo qwen2.5-0.5b": dict(model="Qwen/Qwen2.5-0.5B", algo="ppo"),
    "ppo qwen2.5-0.5b lora": dict(model="Qwen/Qwen2.5-0.5B", algo="ppo", lora_rank=16),
    "ppo llama-3.2-1b gc": dict(model="meta-llama/Llama-3.2-1B", algo="ppo", gradient_checkpointing=True),
    "ppo opt-350m eager": dict(model="facebook/opt-350m", algo="ppo", attention="eager"),
    "ppo pythia-410m": dict(model="EleutherAI/pythia-410m", algo="ppo"),
    "ppo llama-2-7b lora gc": dict(model="meta-llama/Llama-2-7b-hf", algo="ppo", lora_rank=16,
                                   gradient_checkpointing=True),
    "ppo llama-2-7b gc": dict(model="meta-llama/Llama-2-7b-hf", algo="ppo", gradient_checkpointing=True),
    "grpo qwen2.5-0.5b": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo"),
    "grpo qwen2.5-1.5b lora gc": dict(model="Qwen/Qwen2.5-1.5B", algo="grpo", lora_rank=32,
                                      gradient_checkpointing=True),
    "grpo qwen3-0.6b": dict(model="Qwen/Qwen3-0.6B", algo="grpo"),
    "grpo qwen2.5-0.5b chunked": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", logprob_kernel="chunked"),
    "grpo qwen2.5-0.5b fp32-fused": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", logprob_kernel="fp32-fused"),
    "grpo llama-3.2-1b reward": dict(model="meta-llama/Llama-3.2-1B", algo="grpo", reward="model",
                                     gradient_checkpointing=True),
    "grpo llama-2-7b lora gc": dict(model="meta-llama/Llama-2-7b-hf", algo="grpo", lora_rank=16,
                                    gradient_checkpointing=True),
    "remax qwen2.5-0.5b": dict(model="Qwen/Qwen2.5-0.5B", algo="remax"),
    "remax llama-3.2-1b gc": dict(model="meta-llama/Llama-3.2-1B", algo="remax", gradient_checkpointing=True),
    "remax opt-1.3b gc": dict(model="facebook/opt-1.3b", algo="remax", gradient_checkpointing=True),
    "rloo qwen2.5-0.5b": dict(model="Qwen/Qwen2.5-0.5B", algo="rloo"),
    "rloo llama-3.2-1b lora": dict(model="meta-llama/Llama-3.2-1B", algo="rloo", lora_rank=16),
    "dpo qwen2.5-0.5b": dict(model="Qwen/Qwen2.5-0.5B", algo="dpo"),
    "dpo llama-3.2-1b gc": dict(model="meta-llama/Llama-3.2-1B", algo="dpo", gradient_checkpointing=True),
    "dpo mistral-7b lora gc": dict(model="mistralai/Mistral-7B-v0.1", algo="dpo", lora_rank=16,
                                   gradient_checkpointing=True),
    "sft qwen2.5-1.5b": dict(model="Qwen/Qwen2.5-1.5B", algo="sft"),
    "sft llama-3.2-3b gc": dict(model="meta-llama/Llama-3.2-3B", algo="sft", gradient_checkpointing=True),
    "sft qwen2.5-0.5b fused": dict(model="Qwen/Qwen2.5-0.5B", algo="sft", optimizer_impl="fused"),
    "sft qwen2.5-0.5b batch 4": dict(model="Qwen/Qwen2.5-0.5B", algo="sft", micro_batch_size=4),
    # tiny ones (seconds each): every algorithm on every tiny family of the catalog, MoE included
    **{f"{algo} tiny-{family}": dict(model=f"memplan/tiny-{family}", algo=algo)
       for algo in ("ppo", "grpo", "remax", "rloo", "dpo", "sft") for family in TINY},
}
"""Name → request fields on top of ``BASE``. benchmarks/accuracy.py traces all of them."""

PACKED_CASES: dict[str, dict[str, object]] = {
    # issue 17: packed micro batches (memplan.harness.packing: [1, T] rows, varlen attention) and the entropy
    "grpo qwen2.5-0.5b packed": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", packing=True, gen_len_mean=128),
    "ppo qwen2.5-0.5b packed cap": dict(model="Qwen/Qwen2.5-0.5B", algo="ppo", packing=True, gen_len_mean=128,
                                        rollout_batch_size=8, max_tokens_per_gpu=1536),
    "grpo llama-3.2-1b packed gc cap": dict(model="meta-llama/Llama-3.2-1B", algo="grpo", packing=True,
                                            gen_len_mean=128, gradient_checkpointing=True, rollout_batch_size=2,
                                            max_tokens_per_gpu=3072, score_max_tokens_per_gpu=6144),
    "grpo qwen2.5-0.5b packed fused entropy": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", packing=True,
                                                   logprob_kernel="fused", entropy="scoring+update",
                                                   entropy_kernel="eager"),
    "grpo qwen2.5-0.5b packed fp32-chunked entropy": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", packing=True,
                                                          gen_len_mean=128, micro_batch_size=8, logprob_kernel="fused",
                                                          entropy="scoring+update", entropy_kernel="fp32-chunked"),
    "grpo qwen2.5-0.5b packed log-softmax entropy": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", packing=True,
                                                         entropy="scoring", entropy_kernel="eager"),
    "grpo qwen2.5-0.5b chunked entropy": dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", entropy="update",
                                              entropy_kernel="chunked"),
    "ppo qwen2.5-0.5b packed fp32-fused": dict(model="Qwen/Qwen2.5-0.5B", algo="ppo", packing=True, gen_len_mean=128,
                                               logprob_kernel="fp32-fused", micro_batch_size=2),  # OpenRLHF
    # tiny ones (seconds each), in CI
    "grpo tiny-llama packed": dict(model="memplan/tiny-llama", algo="grpo", packing=True, gen_len_mean=128),
    "ppo tiny-llama packed cap": dict(model="memplan/tiny-llama", algo="ppo", packing=True, gen_len_mean=128,
                                      rollout_batch_size=4, max_tokens_per_gpu=1152),
    "grpo tiny-llama packed entropy": dict(model="memplan/tiny-llama", algo="grpo", packing=True,
                                           logprob_kernel="fused", entropy="scoring+update", entropy_kernel="eager"),
    "rloo tiny-llama packed entropy": dict(model="memplan/tiny-llama", algo="rloo", packing=True, gen_len_mean=128,
                                           micro_batch_size=2, entropy="update", entropy_kernel="eager"),
}
"""Name → request fields on top of ``BASE``: packed micro batches and the entropy, held to ``PACKED_COMPONENTS``
(their own table in benchmarks/results/accuracy.md; the rows above keep ``COMPONENTS`` and their summary)."""

PACKED_COMPONENTS: dict[str, tuple[tuple[str, ...], float]] = {
    "states": (("parameter", "buffer", "gradient", "optstate"), 0.01),
    "transients": (("activation", "temp", "kv_cache", "logits", "other"), 0.05),
    "total": (("total",), 0.05),
}
"""Tolerances of ``PACKED_CASES``, as a share of the phase's traced peak: states ±1 % (closed forms: packing moves
no weight, gradient or optimizer byte); transients and total ±5 % — the padded rows' bounds, stated apart so
that neither set can be loosened for the other: a packed micro batch is the same layers over T tokens, and the
entropy a closed form per logits row (``formulas.entropy_bytes``); a larger error is a missing or misplaced term."""


def components(case: str) -> dict[str, tuple[tuple[str, ...], float]]:
    """The component groups and tolerances ``case`` is held to."""
    return PACKED_COMPONENTS if case in PACKED_CASES else COMPONENTS


def request(case: str) -> EstimateRequest:
    return EstimateRequest(**{**BASE, **(PACKED_CASES[case] if case in PACKED_CASES else CASES[case])})
