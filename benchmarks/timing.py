"""Estimated vs measured time of public RL fine-tuning runs (memplan.timing against the timing corpus).

    python benchmarks/timing.py

Reads benchmarks/corpus/timing/public_runs.jsonl (one public, measured run per line: its source, the request that
maps it onto memplan, every assumption of that mapping, the measured hours) and writes benchmarks/results/timing.md:
estimated and measured hours, their ratio, each phase's share, the PPO/ReMax ratios, and the cost of a call.
Nothing is fitted: the constants are memplan.timing.hardware's.
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder

# --- configuration -------------------------------------------------------------------------------------
CORPUS = Path(__file__).parent / "corpus" / "timing" / "public_runs.jsonl"  # its own folder: memplan.validate
# reads every *.jsonl directly under corpus/ as a memory record
OUT = Path(__file__).parent / "results" / "timing.md"
RATIOS = (  # (PPO record, ReMax record): the README's "PPO ≈ 2× slower", per prompt
    ("remax-readme/ppo-4gpu-offload", "remax-readme/remax-4gpu-offload"),
    ("remax-readme/ppo-1gpu-offload", "remax-readme/remax-1gpu-offload"),
)
REPEATS = 2000
# --------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from memplan.report import EstimateRequest  # noqa: E402
from memplan.timing import StepTime, step_time  # noqa: E402


def load() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def estimate(record: dict) -> StepTime:
    return step_time(EstimateRequest(**record["request"]), dataset_samples=record["dataset_samples"],
                     epochs=record["epochs"])


def main() -> None:
    records = load()
    results = {r["id"]: estimate(r) for r in records}
    lines = ["# Time per step: estimated vs measured", "",
             f"Command: `python benchmarks/timing.py` · memplan.timing · {datetime.date.today().isoformat()} · "
             f"Machine: {machine()} (the estimate is deterministic; the machine matters only for the call cost).", "",
             "Each row is one public, measured run of `benchmarks/corpus/timing/public_runs.jsonl` (source, request "
             "and assumptions there). Nothing is fitted: the achievable fractions are the stated constants of "
             "`memplan/timing/hardware.py`.", "",
             "| run | measured h | estimated h | est / meas | s / step | rollout | scoring | actor update "
             "| critic update |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        t = results[r["id"]]
        share = {p.phase: f"{p.share:.0%}" for p in t.phases}
        lines.append(f"| {r['id']} | {r['measured_hours']:.2f} | {t.wall_hours:.2f} | "
                     f"{t.wall_hours / r['measured_hours']:.2f} | {t.seconds_per_step:.1f} | "
                     f"{share.get('rollout', '')} | {share.get('scoring', '')} | "
                     f"{share.get('actor_update', '')} | {share.get('critic_update', '')} |")
    lines += ["", "## PPO / ReMax (time per prompt, the README's batch sizes)", "",
              "| pair | measured | estimated |", "|---|---:|---:|"]
    by_id = {r["id"]: r for r in records}
    for ppo, remax in RATIOS:
        measured = by_id[ppo]["measured_hours"] / by_id[remax]["measured_hours"]
        estimated = results[ppo].wall_seconds / results[remax].wall_seconds
        lines.append(f"| {ppo.split('/')[1]} / {remax.split('/')[1]} | {measured:.2f} | {estimated:.2f} |")
    ppo4, remax4 = results[RATIOS[0][0]], results[RATIOS[0][1]]
    share = {t.algo: {p.phase: p.share for p in t.phases} for t in (ppo4, remax4)}
    lines += ["", "## What dominates, and why", "",
              f"* ReMax (4 GPUs, offload): rollout {share['remax']['rollout']:.0%} of the step — two generation "
              "passes (sampled, then greedy), each 256 decode steps that the hybrid engine runs without CUDA graphs, "
              "so each token costs the launch floor (1.23 ms per layer) whatever the batch; training the one 7B "
              f"model is {share['remax']['actor_update']:.0%}, scoring (reference, reward on both passes, weights "
              f"streamed from the CPU) {share['remax']['scoring']:.0%}.",
              f"* PPO (4 GPUs, offload): one generation pass ({share['ppo']['rollout']:.0%}), but two trained 7B "
              f"models (actor {share['ppo']['actor_update']:.0%}, critic {share['ppo']['critic_update']:.0%}) and "
              f"four scoring forwards ({share['ppo']['scoring']:.0%}): training-dominated.",
              "* Per prompt memplan finds PPO only ~1.1× slower than ReMax: ReMax's second generation pass costs "
              "about what PPO's critic (its forward, training and CPU optimizer step) does. The README measures "
              "2.1×: PPO's measured step (57.6 s at 30 prompts per GPU) is twice what its FLOPs and bytes account for "
              "at these efficiencies, while both ReMax runs with offload come out within 1–7 %. OpenRLHF's DSChat "
              "row (PPO, 7B critic) is short by 2.7× too. DeepSpeed-Chat's OPT-6.7B runs (OPT-350M critic) match; "
              "its larger OPT runs are short as well, but their batches and inference TP are not published. "
              "Candidates for what memplan does not see in PPO: DeepSpeed ZeRO-2 offload's per-parameter gradient "
              "copies during backward, allocator retries near the memory limit at the maximum batch, training "
              "micro-batches smaller than the generation batch (several CPU optimizer steps per generation). "
              "A GPU run would tell them apart."]
    # sensitivity: the hybrid engine's decode without the eager launch floor (HBM-bound at the CUDA-graph rate)
    import memplan.timing.formulas as formulas

    floor, formulas.EAGER_DECODE_SECONDS_PER_LAYER = formulas.EAGER_DECODE_SECONDS_PER_LAYER, 0.0
    try:
        alt = {r["id"]: estimate(r) for r in records}
    finally:
        formulas.EAGER_DECODE_SECONDS_PER_LAYER = floor
    lines += ["", "## Sensitivity: the hybrid engine's decode without the launch floor", "",
              "memplan charges a decode step without CUDA graphs (HF `generate`, the hybrid engine) at least "
              "1.23 ms per layer (the eager Llama-2-7B figure of PyTorch's gpt-fast blog). DeepSpeed's fused "
              "inference kernels launch fewer kernels per layer than that eager model; with no floor at all the "
              "decode is HBM-bound at the CUDA-graph rate (0.71). The truth lies between the two columns.", "",
              "| run | measured h | with floor | est / meas | no floor | est / meas |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        t, u = results[r["id"]], alt[r["id"]]
        lines.append(f"| {r['id']} | {r['measured_hours']:.2f} | {t.wall_hours:.2f} | "
                     f"{t.wall_hours / r['measured_hours']:.2f} | {u.wall_hours:.2f} | "
                     f"{u.wall_hours / r['measured_hours']:.2f} |")
    for ppo, remax in RATIOS:
        lines.append(f"| PPO / ReMax, {ppo.split('-', 2)[2]} (ratio) | "
                     f"{by_id[ppo]['measured_hours'] / by_id[remax]['measured_hours']:.2f} | "
                     f"{results[ppo].wall_seconds / results[remax].wall_seconds:.2f} | | "
                     f"{alt[ppo].wall_seconds / alt[remax].wall_seconds:.2f} | |")
    request = EstimateRequest(**by_id[RATIOS[0][0]]["request"])
    step_time(request)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(REPEATS):
            step_time(request)
        runs.append((time.perf_counter() - start) / REPEATS * 1e6)
    lines += ["", f"Cost of one `step_time` call (PPO, 4 roles): median {statistics.median(runs):.0f} µs over 5 × "
              f"{REPEATS} calls (resolve's caches warm, as in a planner's search).", ""]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
