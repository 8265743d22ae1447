"""Time the planner in process: a full ``plan`` for the ReMax paper's PPO request, ``--max-batch`` and ``--min-gpus``.

    python benchmarks/bench_plan.py

Writes benchmarks/results/bench_plan.md (command, machine, date). Target: a full plan well under a second.
"""

from __future__ import annotations

import datetime
import gc
import statistics
import sys
import time
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder

# --- configuration -------------------------------------------------------------------------------------
REPEATS = 20  # timed runs of each search (the per-request report cache is cleared before each run)
WARMUP = 2
HEADLINE = dict(  # the ReMax paper's setup, PPO: does not fit on 8×A100-40GB as given
    model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB", actor_zero_stage=2, critic_zero_stage=2,
    ref_zero_stage=3, reward_zero_stage=3, offload_ref=True, offload_reward=True, gradient_checkpointing=True,
    rollout_engine="hybrid-engine", micro_batch_size=1, prompt_len=256, gen_len=256,
)
MAX_BATCH = dict(HEADLINE, gpus="1xA100-80GB", offload="optimizer")  # the ReMax README's max-batch setting
EXTRA = {  # wider searches: every knob, more roles to place, a vLLM fraction to choose
    "plan, PPO unsharded (ZeRO-0, 8×A100-40GB)": dict(model="meta-llama/Llama-2-7b-hf", algo="ppo",
                                                       gpus="8xA100-40GB", zero_stage=0),  # the defaults shard now
    "plan, GRPO vLLM 0.9 (8×H100-80GB, batch 8)": dict(model="meta-llama/Llama-2-7b-hf", algo="grpo",
                                                        gpus="8xH100-80GB", rollout_engine="vllm",
                                                        vllm_gpu_memory_utilization=0.9, micro_batch_size=8),
}
OUT = Path(__file__).parent / "results" / "bench_plan.md"
# ---------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import memplan  # noqa: E402
from memplan.estimator import _cached  # noqa: E402  (the per-request cache, cleared before each timed run)
from memplan.planner import batch_limit, gpu_limit, plan  # noqa: E402
from memplan.report import EstimateRequest  # noqa: E402


def timed(fn, request: EstimateRequest) -> tuple[list[float], object]:
    """Each run as a first plan: ``estimate``'s per-request cache (``memplan.estimator._cached``) is cleared
    before it, so every estimate the search makes is computed (the estimator's per-role and per-step caches
    stay warm, as they do within one search)."""
    for _ in range(WARMUP):
        _cached.cache_clear()
        result = fn(request)
    gc.collect()
    times = []
    for _ in range(REPEATS):
        _cached.cache_clear()
        t0 = time.perf_counter()
        result = fn(request)
        times.append((time.perf_counter() - t0) * 1e3)
    return times, result


def main() -> None:
    searches = [
        ("plan, ReMax-paper PPO (8×A100-40GB)", "memplan plan", plan, HEADLINE),
        ("--max-batch, ReMax-paper PPO (1×A100-80GB, offload)", "memplan plan --max-batch", batch_limit,
         MAX_BATCH),
        ("--min-gpus, ReMax-paper PPO (A100-40GB)", "memplan plan --min-gpus", gpu_limit, HEADLINE),
        *((name, "memplan plan", plan, kw) for name, kw in EXTRA.items()),
    ]
    rows = []
    for name, command, fn, kwargs in searches:
        times, result = timed(fn, EstimateRequest(**kwargs))
        if command == "memplan plan":
            answer = (f"{result.evaluations} estimates; first (fastest): "
                      + (", ".join(f"{k} {a}→{b}" for k, (a, b) in result.candidates[0].changes.items()) or "as given"))
        elif command.endswith("--max-batch"):
            answer = f"max_micro_batch_size {result.max_micro_batch_size}"
        else:
            answer = f"min_gpus {result.min_gpus}"
        rows.append((name, times, answer))

    lines = [
        "# memplan planner timing",
        "",
        f"Command: `{Path(sys.executable).name} benchmarks/bench_plan.py`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"memplan {getattr(memplan, '__version__', '?')}, pydantic {__import__('pydantic').VERSION}",
        "",
        "In-process searches (the CLI adds typer and rich start-up, ~0.3 s). The ReMax paper's setup: Llama-2-7B,",
        "actor/critic ZeRO-2, reference/reward ZeRO-3 + parameter offload, gradient checkpointing, hybrid engine,",
        f"batch 1, 256 + 256 tokens. Each row: {REPEATS} timed runs after {WARMUP} warm-up runs. "
        "Target: a full plan well under a second.",
        "",
        "| search | p50 ms | max ms | mean ms | answer |",
        "|---|---:|---:|---:|---|",
    ]
    for name, times, answer in rows:
        lines.append(f"| {name} | {statistics.median(times):.1f} | {max(times):.1f} | {statistics.fmean(times):.1f} "
                     f"| {answer} |")
    lines.append("")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
