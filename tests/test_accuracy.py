"""The estimator against the tracer: CI's regression of the analytic model (issue 3).

Expected numbers are the traces' — what the step recipes of memplan/harness/steps/ allocate, counted on fake
tensors (``memplan.harness.trace``) — never typed in. Comparison, component groups and tolerances live in
memplan/harness/accuracy.py, shared with benchmarks/accuracy.py (the full matrix, ~70 configurations, and
benchmarks/results/accuracy.md):

* ``states`` (parameter + buffer + gradient + optimizer state) ±1 % of the phase's traced peak;
* ``transients`` (activation + temp + KV cache + logits + other) ±5 %;
* ``total`` ±5 % per phase, and the acceptance target: median |total error| ≤ 3 % over every CI phase.

CI traces ``CI_CASES``: every algorithm on memplan/tiny-llama, PPO on every other tiny family (MoE included),
and four real-size configurations covering LoRA, gradient checkpointing, eager attention and the greedy
ReMax rollout (~3 minutes on 2 cores). Every test prints its table of errors; the median test prints the
whole one past pytest's capture.

Packed micro batches and the entropy (issue 17): ``PACKED_CI_CASES`` (tiny-llama, seconds each) are held to
their own tolerances, ``PACKED_COMPONENTS`` in memplan/harness/accuracy.py (states ±1 %, transients ±5 %, total
±5 % of the phase's traced peak), and stay out of the median above, so the padded rows' bounds do not move.
"""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from memplan.harness.accuracy import (  # noqa: E402
    CASES, MEDIAN_TARGET, PACKED_CASES, PACKED_COMPONENTS, TINY, PhaseError, compare, request, summary, table,
)

CI_CASES = [
    *(f"{algo} tiny-llama" for algo in ("ppo", "grpo", "remax", "rloo", "dpo", "sft")),
    *(f"ppo tiny-{family}" for family in TINY if family != "llama"),
    "ppo qwen2.5-0.5b lora",
    "grpo qwen3-0.6b",
    "remax llama-3.2-1b gc",
    "ppo opt-350m eager",
]
PACKED_CI_CASES = ["grpo tiny-llama packed", "ppo tiny-llama packed cap", "grpo tiny-llama packed entropy",
                   "rloo tiny-llama packed entropy"]


@functools.cache
def rows(case: str) -> tuple[PhaseError, ...]:
    from memplan.harness import trace

    components = PACKED_COMPONENTS if case in PACKED_CASES else None
    traced = trace(request(case))
    return tuple(compare(case, traced, components=components) if components else compare(case, traced))


def test_ci_cases_are_in_the_matrix() -> None:
    assert set(CI_CASES) <= set(CASES)
    assert set(PACKED_CI_CASES) <= set(PACKED_CASES)
    assert len(CASES) >= 20


ESTIMATE_GAPS: dict[str, str] = {}
"""Cases whose estimate misses a term the trace shows: expected to fail (strict) until memplan/estimator/ counts it.
(The update's eager-entropy backward, 'grpo tiny-llama packed entropy', is counted since issue 17's follow-up:
``formulas.entropy_beside_logprobs_bytes``.)"""


@pytest.mark.parametrize("case", [
    *CI_CASES,
    *(pytest.param(c, marks=pytest.mark.xfail(reason=ESTIMATE_GAPS[c], strict=True)) if c in ESTIMATE_GAPS else c
      for c in PACKED_CI_CASES),
])
def test_estimate_matches_trace(case: str) -> None:
    phase_rows = list(rows(case))
    text = table(phase_rows)
    print("\n" + text)
    bad = [(r.phase, name) for r in phase_rows for name in r.over_tolerance()]
    assert not bad, f"{case}: over tolerance {bad}\n{text}"


def test_median_error_over_ci_cases(capsys: pytest.CaptureFixture) -> None:
    all_rows = [r for case in CI_CASES for r in rows(case)]
    median, worst = summary(all_rows)
    text = table(all_rows)
    with capsys.disabled():
        print("\n" + text)
    assert median <= MEDIAN_TARGET, text
