"""Write benchmarks/results/validate.md: `memplan validate` over the default corpus, with command, machine and date.

    python benchmarks/corpus/write_results.py
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine  # noqa: E402

from memplan.estimator import band  # noqa: E402
from memplan.validate import corpus_name, format_table, load_corpus, validate  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "validate.md"


def band_section() -> list[str]:
    """The error band's fits (memplan/catalog/error_band.json, written by benchmarks/corpus/error_band.py): each
    form's quantiles, its coverage with each source file held out, and in each third of the estimates."""
    data = band.load()
    gib = 2**30
    lines = [
        "## The error band: which form describes the residuals",
        "",
        f"`python {data['provenance']['command'].split(' ', 1)[1]}` ({data['provenance']['date']}) fits the p5 and "
        "p95 of the residual d = measured − estimated per phase kind in three forms — relative (d/T's quantiles, T "
        "the estimate), bytes (d's quantiles), bytes+relative (a linear quantile fit a + b·T) — and keeps the one "
        "with the smallest pinball loss when each source file (one model on one device) is held out in turn. "
        "Coverage: points inside the band (of 90 % nominal), held out by source, and in-sample per third of the "
        "estimates (small / middle / large).",
        "",
        "```",
        f"{'kind':<9} {'form':<15} {'p5':>17} {'p95':>17}  {'held-out loss':>14} {'held-out cover':>15}  "
        "cover by third (small / middle / large estimates)",
    ]
    for kind, k in data["kinds"].items():
        for form, f in k["forms"].items():
            mark = "*" if form == k["form"] else " "
            thirds = f["estimate_thirds_bytes"]
            cover = " / ".join(f"{a}/{b}" for a, b in f["coverage_by_third"])
            held, n = f["held_out_coverage"]
            lines.append(f"{kind:<9}{mark}{form:<15} {band.describe(f['lower'], f['lower_bytes']):>17} "
                         f"{band.describe(f['upper'], f['upper_bytes']):>17}  "
                         f"{f['held_out_pinball_bytes_per_point'] / gib:>9.3f} GiB {held:>7}/{n:<3} {held / n:>4.0%}  "
                         f"{cover}  (thirds split at {thirds[1] / gib:.1f}, {thirds[2] / gib:.1f} GiB)")
    w = data["widest"]
    covered = ", ".join(f"{d}={'/'.join(v)}" for d, v in data["covered"].items())
    lines += [
        "```",
        "",
        "`*` the form kept. Held-out loss: the pinball loss of both quantiles per point, in GiB, each source's "
        "points scored by the fit on the other sources (smaller is better: it rewards coverage and narrowness "
        "together, and charges the two-parameter form for what it overfits). A configuration outside the "
        f"corpus' (`covered`: {covered}) is an extrapolation: it "
        f"take the lowest low end measured, part by part ({band.describe(w['lower'], w['lower_bytes'])}), and "
        "their own kind's high end (memplan/estimator/band.py).",
        "",
    ]
    return lines


HEADLINE = dict(model="meta-llama/Llama-2-7b-hf", gpus="8xA100-40GB", zero_stage=2, ref_zero_stage=3,
                reward_zero_stage=3, offload_ref=True, offload_reward=True, gradient_checkpointing=True,
                rollout_engine="hybrid-engine", prompt_len=256, gen_len=256, micro_batch_size=1)
"""README's headline (`memplan compare ... --algos ppo,remax`, the ReMax paper's setup on 8×A100-40GB)."""


def readme_section(summary) -> list[str]:
    """What README's accuracy section should say, from today's numbers (the summary and the band file)."""
    import memplan

    data = band.load()
    gib = 2**30
    rows = []
    for algo in ("ppo", "remax"):
        r = memplan.estimate(algo=algo, **HEADLINE)
        low, high = r.peak_band_bytes
        rows.append(f"{algo}: {r.verdict.upper().replace('_', ' ')}, peak {r.peak_bytes_per_gpu / gib:.2f} GiB of "
                    f"{r.capacity_bytes / gib:.2f}, on a real GPU {low / gib:.2f}–{high / gib:.2f} GiB (extrapolated)")
    groups = {g.group: g for g in summary.groups}
    t, k = data["kinds"]["training"], data["kinds"]["rollout"]
    lines = [
        "## For README's accuracy section",
        "",
        "Real GPUs first: on the public corpus (AgileRL's NVML device peaks: GRPO, LoRA, a colocated vLLM in sleep "
        "mode, one A100-40GB or L4), memplan's rollout estimate is off by a median "
        f"{groups['rollout'].median_abs_error:.1%} (p90 {groups['rollout'].p90_abs_error:.1%}); the training "
        f"step's by {groups['scoring+actor_update'].median_abs_error:.1%} (p90 "
        f"{groups['scoring+actor_update'].p90_abs_error:.1%}), under-estimated: what memplan misses there is "
        "fixed-size — a sleeping vLLM engine's CUDA graphs and loaded kernels (0.4–0.8 GiB, which no source sizes: "
        "memplan/estimator/__init__.py, Known limitations) and the caching allocator's reserve — so it weighs "
        "heavily on small runs and little on big ones. Every estimate carries the error band the corpus shows: "
        f"for the training step {band.describe(t['lower'], t['lower_bytes'])} to "
        f"{band.describe(t['upper'], t['upper_bytes'])} in bytes, for the rollout "
        f"{band.describe(k['lower'], k['lower_bytes'])} to {band.describe(k['upper'], k['upper_bytes'])} of the "
        "estimate (each form chosen by its held-out fit, above); a run whose peak lies within it of capacity is "
        "TIGHT. A configuration the corpus does not hold (several GPUs, DeepSpeed or FSDP, full fine-tuning, PPO's "
        "critic) gets the band extrapolated and says so.",
        "",
        "The headline (`memplan compare --model meta-llama/Llama-2-7b-hf --gpus 8xA100-40GB --algos ppo,remax "
        "--zero-stage 2 --ref-zero-stage 3 --reward-zero-stage 3 --offload-ref --offload-reward "
        "--gradient-checkpointing --rollout-engine hybrid-engine --prompt-len 256 --gen-len 256 "
        "--micro-batch-size 1`) now reads:",
        "",
        "```",
        *rows,
        "```",
        "",
        "ReMax was TIGHT under the relative band (its high end 47.30 GiB: the +63.8 % measured on 2 GiB LoRA runs "
        "applied to a 28.88 GiB full fine-tune); under the bytes band it FITS with 1.85 GiB of measured miss "
        "beside it. That band is extrapolated (8 GPUs, DeepSpeed, full fine-tuning: none in the corpus): the "
        "FITS rests on the assumption that the misses stay fixed-size there.",
        "",
    ]
    return lines


def main() -> int:
    start = time.perf_counter()
    summary = validate(load_corpus(), corpus=(corpus_name(),))
    seconds = time.perf_counter() - start
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# memplan validate: the estimate against real GPU measurements",
        "",
        "Command: `memplan validate` (the table below; written by `python benchmarks/corpus/write_results.py`)  ",
        f"Machine: {machine()}; estimates only (no GPU, no torch), {seconds:.1f} s  ",
        f"Date: {now}; memplan at {commit} plus the working tree of that moment  ",
        "Corpus: benchmarks/corpus/ (its README.md says where every record comes from and how each setting was "
        "pinned)",
        "",
        "Error = (estimate − measured) / measured; negative is an under-estimate. An NVML device peak is compared to "
        "the phases' total per GPU including fixed bytes (CUDA context, cuBLAS workspace). Groups: `rollout` "
        "(AgileRL's "
        "generation window) and `scoring+actor_update` (AgileRL's training window: the larger of the two phases). "
        "Issue 16's targets per group: median |error| ≤ 5 %, p90 ≤ 12 %, no under-estimate beyond 10 %, every "
        "verdict right.",
        "",
        "## Summary",
        "",
        "```",
        format_table(summary, points=False),
        "```",
        "",
        *band_section(),
        *readme_section(summary),
        "## Every record",
        "",
        "```",
        format_table(summary, points=True).split("\n\nGiB = ", 1)[0],
        "```",
        "",
    ]
    OUT.write_text("\n".join(head))
    print(f"{len(summary.results)} records -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
