"""Time memplan.estimate in process: one estimate (p50/p99 over many) and a sweep of 10,000 configurations.

    .venv/bin/python benchmarks/bench_estimate.py

Writes benchmarks/results/bench_estimate.md (command, machine, date). Target: p50 < 100 µs per estimate.
``estimate`` keeps the (immutable) reports of recent requests (``memplan.estimator.CACHE_SIZE``): the repeated
headline request hits that cache; the "first seen" row clears it before each call, and every configuration
of the sweep is new, so those two time the whole computation. Below that cache the estimator keeps what
recurs between requests (the resolved roles, their states and resident items, layer geometry, line items): warm in the
"first seen" row and, as in any sweep or plan, partly warm in the sweep; the "cold" row clears them too
(all but the catalog's model and GPU lookups).
"""

from __future__ import annotations

import datetime
import gc
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder

# --- configuration -------------------------------------------------------------------------------------
REPEATS = 5_000  # timed estimates of the headline request
WARMUP = 200
SWEEP_SIZE = 10_000
HEADLINE = dict(
    model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB", actor_zero_stage=2, critic_zero_stage=2,
    ref_zero_stage=3, reward_zero_stage=3, offload_ref=True, offload_reward=True, gradient_checkpointing=True,
    rollout_engine="hybrid-engine", micro_batch_size=1, prompt_len=256, gen_len=256,
)
SWEEP_AXES = dict(
    model=["meta-llama/Llama-2-7b-hf", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-1.5B", "facebook/opt-1.3b",
           "mistralai/Mistral-7B-v0.1"],
    algo=["ppo", "grpo", "remax", "rloo", "dpo", "sft"],
    gpus=["8xA100-40GB", "8xA100-80GB", "8xH100-80GB", "1xA100-80GB"],
    zero_stage=[0, 1, 2, 3],
    gradient_checkpointing=[False, True],
    micro_batch_size=[1, 2, 4, 8, 16, 32, 64],
    offload=["none", "optimizer"],
    lora_rank=[0, 16],
)
OUT = Path(__file__).parent / "results" / "bench_estimate.md"
# ---------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import memplan  # noqa: E402
from memplan.errors import InputError  # noqa: E402
from memplan.estimator import _cached, _fixed, _residents, _role_parts  # noqa: E402  (cleared for "first seen", "cold")
from memplan.estimator.algorithms import _forward_per_token, _saved_per_token, model_states  # noqa: E402
from memplan.estimator.ledger import _line_item, line_item  # noqa: E402
from memplan.estimator.resolve import _learned_positions, _lora_params, _role_setup, _roles, _sharding  # noqa: E402
from memplan.report import EstimateRequest  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def time_calls(fn, items) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for item in items:
        t0 = clock()
        fn(item)
        out.append((clock() - t0) / 1000)  # µs
    return out


def time_first_seen(request, repeats: int) -> list[float]:
    """The request as if never seen: the per-request cache cleared (untimed) before each call."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        _cached.cache_clear()
        t0 = clock()
        memplan.estimate(request)
        out.append((clock() - t0) / 1000)
    return out


ESTIMATOR_CACHES = (_cached, _fixed, _residents, _role_parts, _forward_per_token, _saved_per_token, model_states,
                    _line_item, line_item, _lora_params, _roles, _role_setup, _sharding, _learned_positions)


def time_cold(request, repeats: int) -> list[float]:
    """The request with every estimator cache cleared (untimed) before each call, catalog lookups excepted."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for cache in ESTIMATOR_CACHES:
            cache.cache_clear()
        t0 = clock()
        memplan.estimate(request)
        out.append((clock() - t0) / 1000)
    return out


def _estimate_or_invalid(request: EstimateRequest) -> None:
    try:
        memplan.estimate(request)
    except InputError:
        pass


def sweep_requests() -> list[dict]:
    """SWEEP_SIZE configurations drawn evenly (fixed seed) from the product of SWEEP_AXES."""
    combos = [dict(zip(SWEEP_AXES, c)) for c in itertools.product(*SWEEP_AXES.values())]
    return random.Random(0).sample(combos, SWEEP_SIZE)


def main() -> None:
    request = EstimateRequest(**HEADLINE)
    for _ in range(WARMUP):
        memplan.estimate(request)
    gc.collect()
    single = time_calls(memplan.estimate, [request] * REPEATS)
    validated = time_calls(lambda kw: memplan.estimate(**kw), [HEADLINE] * REPEATS)
    first_seen = time_first_seen(request, REPEATS)
    cold = time_cold(request, REPEATS)

    configs = sweep_requests()
    assert len(configs) == SWEEP_SIZE, len(configs)
    fits = invalid = 0
    per_call: list[float] = []
    by_algo: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for kw in configs:
        c0 = time.perf_counter_ns()
        try:
            report = memplan.estimate(**kw)
        except InputError:
            invalid += 1
        else:
            fits += report.fits
        per_call.append((time.perf_counter_ns() - c0) / 1000)
        by_algo.setdefault(kw["algo"], []).append(per_call[-1])
    sweep_s = time.perf_counter() - t0

    # the same configurations again as prebuilt requests (validation outside the timing), report cache cleared
    _cached.cache_clear()
    prebuilt = [EstimateRequest(**kw) for kw in configs]  # every axis value is in range: no ValidationError
    gc.collect()
    per_prebuilt = time_calls(_estimate_or_invalid, prebuilt)

    rows = [
        ("one estimate (prebuilt request)", single),
        ("one estimate (kwargs, request validated)", validated),
        ("one estimate (prebuilt request, first seen: cache cleared)", first_seen),
        ("one estimate (prebuilt request, cold: every estimator cache cleared)", cold),
        ("sweep, per configuration", per_call),
        ("sweep, per configuration (requests prebuilt)", per_prebuilt),
    ]
    lines = [
        "# memplan.estimate timing",
        "",
        f"Command: `{Path(sys.executable).name} benchmarks/bench_estimate.py`  ",
        f"Machine: {machine(load_average=True)}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"memplan {getattr(memplan, '__version__', '?')}, pydantic {__import__('pydantic').VERSION}",
        "",
        "Headline request: Llama-2-7B, PPO, 8×A100-40GB, the ReMax paper's setup. Target: p50 < 100 µs.",
        "",
        "| what | n | p50 µs | p99 µs | mean µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in rows:
        lines.append(f"| {name} | {len(values)} | {pct(values, 0.5):.1f} | {pct(values, 0.99):.1f} | "
                     f"{statistics.fmean(values):.1f} |")
    axes = ", ".join(f"{k} ({len(v)})" for k, v in SWEEP_AXES.items())
    lines += [
        "",
        f"Sweep: {SWEEP_SIZE:,} configurations drawn (seed 0) from the product of {axes}: {sweep_s:.2f} s in all "
        f"({SWEEP_SIZE / sweep_s:,.0f} estimates/s); {fits:,} fit, {invalid:,} rejected as invalid input "
        "(counted in the timing). Sweep p50 by algorithm (µs, kwargs): "
        + ", ".join(f"{algo} {pct(values, 0.5):.0f}" for algo, values in by_algo.items()) + ".",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
