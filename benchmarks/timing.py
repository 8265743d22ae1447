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


def _measured_step(record: dict, result: StepTime) -> float:
    return record["measured_hours"] * 3600 / result.steps


def _split(result: StepTime) -> tuple[float, float, float]:
    """(decode seconds, offload seconds: PCIe and CPU optimizer blocks, the rest) of an estimate."""
    items = [(p.phase, i) for p in result.phases for i in p.items]
    decode = sum(i.seconds for ph, i in items if ph == "rollout" and "decode" in i.what)
    offload = sum(i.seconds for ph, i in items if ph.endswith("update") and i.bound in ("pcie", "host"))
    return decode, offload, result.seconds_per_step - decode - offload


def unexplained(by_id: dict, results: dict) -> list[str]:
    """What the README's measured steps imply once memplan's FLOP- and byte-bound terms are taken as they are:
    the no-offload ReMax run gives a decode pass (d), each offload run then gives the offloaded step of one model
    (C), and PPO's measured step minus its modeled rest, one decode pass and two offloaded steps is what no term
    covers."""
    def step(rid: str) -> tuple[float, tuple[float, float, float], StepTime]:
        return _measured_step(by_id[rid], results[rid]), _split(results[rid]), results[rid]

    s_n, (_, _, rest_n), _ = step("remax-readme/remax-4gpu-no-offload")
    d = (s_n - rest_n) / 2
    out = [f"* Decode pass implied by ReMax without offload (4 GPUs, batch 26; taken for the 1-GPU runs too: "
           f"{s_n:.1f} s measured per step, {rest_n:.1f} s of it modeled outside decode): d = {d:.1f} s per pass, against memplan's "
           f"{_split(results['remax-readme/remax-4gpu-no-offload'])[0] / 2:.1f} s (HBM-bound; the hybrid engine's own "
           "launch floor, 32 layers × 15 kernels × 24.0 µs × 256 tokens, is 2.95 s; HF's eager one 10.0 s).", ""]
    out += ["| setting | ReMax measured s/step | implied offloaded step per model (C) | memplan's | PPO measured "
            "s/step | PPO with d and C | unexplained per PPO step | PPO/ReMax per prompt with d and C |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for gpus in ("4gpu", "1gpu"):
        s_r, (_, off_r, rest_r), r = step(f"remax-readme/remax-{gpus}-offload")
        c = s_r - rest_r - 2 * d
        s_p, (_, off_p, rest_p), p = step(f"remax-readme/ppo-{gpus}-offload")
        with_dc = rest_p + d + 2 * c
        ratio = (with_dc / p.prompts_per_step) / (s_r / r.prompts_per_step)
        measured = (by_id[f"remax-readme/ppo-{gpus}-offload"]["measured_hours"]
                    / by_id[f"remax-readme/remax-{gpus}-offload"]["measured_hours"])
        out.append(f"| {gpus} | {s_r:.1f} | {c:.1f} s | {off_r:.1f} s | {s_p:.1f} | {with_dc:.1f} | "
                   f"{s_p - with_dc:.1f} s | {ratio:.2f} (measured {measured:.2f}) |")
    out += ["", "Even with the decode and the offloaded step that the README's ReMax runs imply, PPO's measured step "
            "keeps ~16–18 s that no modeled term covers, in both settings (4 GPUs and 1 GPU alike: not a per-rank "
            "partition or PCIe term). Only the critic is PPO's own; it would have to cost ~3× its FLOPs' worth. No "
            "source read pins it: the ReMax repository has no PPO trainer, the README does not give PPO's "
            "per-phase times, and DeepSpeed-Chat's PPO trainer (ppo_trainer.py) runs the critic as the actor runs, "
            "without the hybrid engine. A measured phase split of that PPO run (DeepSpeed-Chat prints generation "
            "and training latency per step) would settle it."]
    return out


def _timers(record: dict, t: StepTime) -> dict[str, float]:
    """memplan's seconds for each timer of a record's measured phase split, over the measured step's prompts;
    each timer read from the code that printed it (tests/test_timing_phase_split.py)."""
    rollout = [i for p in t.phases if p.phase == "rollout" for i in p.items if "switch" not in i.what]
    phase = {p.phase: p.seconds for p in t.phases}
    if record["phase_timer"] == "deepspeed-hybrid-engine":  # HybridEngine.eval(): Generate time (no gather), ...
        split = {"generation": sum(i.seconds for i in rollout if "gather" not in i.what),
                 "training": phase.get("scoring", 0.0) + phase.get("actor_update", 0.0),
                 "others": phase.get("critic_update", 0.0)}
    else:  # the OpenRLHF authors' DeepSpeed-Chat fork: generate() (gather included), scoring, the PPO loop
        split = {"generation": sum(i.seconds for i in rollout), "preparation": phase.get("scoring", 0.0),
                 "training": phase.get("actor_update", 0.0) + phase.get("critic_update", 0.0)}
    scale = record["measured_step_prompts"] / t.prompts_per_step
    return {k: v * scale for k, v in split.items()}


def phase_splits(records: list[dict], results: dict) -> list[str]:
    """Measured vs estimated seconds per timer, for the records that carry a measured phase split."""
    out = ["| run | timer | measured s | estimated s | est / meas |", "|---|---|---:|---:|---:|"]
    for r in records:
        if "measured_phase_seconds" not in r:
            continue
        estimated = _timers(r, results[r["id"]])
        for name, seconds in r["measured_phase_seconds"].items():
            if name == "step":
                continue
            out.append(f"| {r['id']} | {name} | {seconds:.2f} | {estimated[name]:.2f} | "
                       f"{estimated[name] / seconds:.2f} |")
    return out


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
    ratio4 = ppo4.wall_seconds / remax4.wall_seconds
    lines += ["", "## What dominates, and why", "",
              f"* ReMax (4 GPUs, offload): rollout {share['remax']['rollout']:.0%} of the step — two generation "
              "passes (sampled, then greedy), each 256 decode steps that the hybrid engine runs without CUDA graphs, "
              "each token bound by reading the weights and the KV cache (14.9 ms at 40 sequences) rather than by "
              "launching the fused layers' kernels (32 × 15 × 24.0 µs = 11.5 ms); training the one 7B "
              f"model is {share['remax']['actor_update']:.0%}, scoring (the actor's experience forward, reference, "
              f"reward on both passes, weights streamed from the CPU) {share['remax']['scoring']:.0%}.",
              f"* PPO (4 GPUs, offload): one generation pass ({share['ppo']['rollout']:.0%}), but two trained 7B "
              f"models (actor {share['ppo']['actor_update']:.0%}, critic {share['ppo']['critic_update']:.0%}) and "
              f"four scoring forwards ({share['ppo']['scoring']:.0%}): training-dominated.",
              "* Read from the sources and modeled (docs/time.md): ReMax's experience forward of the actor "
              "(remax_trainer.py), DeepSpeed's fp32 gradient offload (stage_1_and_2.py), DeepSpeed-Chat PPO's "
              "optimizer step per micro batch (its main.py + ppo_trainer.py; one per step at the README's equal "
              "generation and training batches), and the hybrid engine's kernels per layer from DeepSpeed's source "
              f"(launches.py). Per prompt memplan finds PPO {ratio4:.2f}× slower than ReMax (4 GPUs, offload)."]
    lines += ["", "## What is unexplained (a diagnostic from the README's own runs; nothing here enters the model)", "",
              *unexplained(by_id, results)]
    lines += ["", "## Measured phase splits (per measured step; timers as the printing code defines them)", "",
              *phase_splits(records, results), "",
              "Timers: DeepSpeed's HybridEngine.eval() line — generation = generate() less its ZeRO-3 gather, "
              "training = the scoring forwards + the actor's update, others = the critic's update; the OpenRLHF "
              "authors' DeepSpeed-Chat fork — generation = generate(), preparation = the scoring forwards, "
              "training = actor + critic updates (docs/time.md, 'Measured phase splits')."]
    # sensitivity: the hybrid engine's decode charged as before (HF's eager count) and with no launch floor
    import memplan.timing.launches as launches

    counted, per_launch = launches.hybrid_engine_ops, launches.SECONDS_PER_LAUNCH
    try:
        launches.hybrid_engine_ops = lambda *args, **kwargs: None
        eager = {r["id"]: estimate(r) for r in records}
        launches.SECONDS_PER_LAUNCH = 0.0
        alt = {r["id"]: estimate(r) for r in records}
    finally:
        launches.hybrid_engine_ops, launches.SECONDS_PER_LAUNCH = counted, per_launch
    lines += ["", "## Sensitivity: the hybrid engine's launch floor", "",
              "A decode step without CUDA graphs cannot beat launching its kernels: layers × kernels per layer × "
              f"{per_launch * 1e6:.1f} µs (gpt-fast's eager Llama-2-7B, 1.23 ms per layer, over the "
              f"{launches.EAGER_LAYER_LAUNCHES} kernels that layer launches; `memplan/timing/launches.py`). "
              "'now': the hybrid engine's own count from DeepSpeed's source (Llama 15, OPT 14 per layer; ZeRO-3 "
              "adds the weight merges); 'eager': charged HF's eager count (51), as before; 'no floor': "
              "HBM-bound at the CUDA-graph rate (0.71).", "",
              "| run | measured h | now | est / meas | eager | est / meas | no floor | est / meas |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        t, e, u = results[r["id"]], eager[r["id"]], alt[r["id"]]
        m = r["measured_hours"]
        lines.append(f"| {r['id']} | {m:.2f} | {t.wall_hours:.2f} | {t.wall_hours / m:.2f} | "
                     f"{e.wall_hours:.2f} | {e.wall_hours / m:.2f} | {u.wall_hours:.2f} | {u.wall_hours / m:.2f} |")
    for ppo, remax in RATIOS:
        lines.append(f"| PPO / ReMax, {ppo.split('-', 2)[2]} (ratio) | "
                     f"{by_id[ppo]['measured_hours'] / by_id[remax]['measured_hours']:.2f} | "
                     f"{results[ppo].wall_seconds / results[remax].wall_seconds:.2f} | | "
                     f"{eager[ppo].wall_seconds / eager[remax].wall_seconds:.2f} | | "
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
