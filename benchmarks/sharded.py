"""Estimator vs traced rank-0 peak under FSDP2 and FSDP1 sharding: PPO, GRPO, ReMax × ZeRO-2-like / ZeRO-3-like ×
N ranks.

    python benchmarks/sharded.py --versions 2         # the FSDP2 matrix below (Llama-2-7B; ~20 min on 2 cores)
    python benchmarks/sharded.py --sizes 8 --algos grpo --stages 3 --out s.md --traces s.jsonl   # a subset
    python benchmarks/sharded.py --reuse benchmarks/results/sharded_traces.jsonl --out s.md   # re-estimate (seconds)
    python benchmarks/sharded.py --reuse benchmarks/results/sharded_traces.jsonl --trace-missing --versions 1 \
        --sizes 8 64                                  # trace the FSDP1 runs the file lacks, append them to it

``--versions``: 2 is FSDP2 (``fully_shard``), 1 is FSDP1 (``FullyShardedDataParallel``, verl's strategy fsdp;
zero_stage 3 → FULL_SHARD, 2 → SHARD_GRAD_OP).

Each configuration is traced once (``memplan.harness.sharded.trace_sharded``: rank 0 of N, fake tensors,
fake process group) and estimated (``memplan.estimate``, ``engine='fsdp'``); the estimate is taken net of
``fixed_bytes`` (CUDA context, cuBLAS, NCCL: a trace cannot see them). Relative error = (estimate − traced) /
traced, per phase. Writes benchmarks/results/sharded.md (command, machine, date) and every trace, one
``TraceReport`` per line, to benchmarks/results/sharded_traces.jsonl (``--traces``; committed, so that an
estimator change can be re-checked with ``--reuse`` in seconds).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder

# --- configuration -------------------------------------------------------------------------------------
MODEL = "meta-llama/Llama-2-7b-hf"
ALGOS = ("ppo", "grpo", "remax")
STAGES = (2, 3)  # zero_stage 2 → fully_shard(reshard_after_forward=False), 3 → True
VERSIONS = (2, 1)  # fsdp_version: FSDP2, FSDP1
SIZES = (2, 8, 64)  # ranks; the cluster is "N x H100-80GB"
KNOBS = dict(engine="fsdp", gradient_checkpointing=True, micro_batch_size=1, prompt_len=256, gen_len=256)
OUT = Path(__file__).parent / "results" / "sharded.md"
TRACES = Path(__file__).parent / "results" / "sharded_traces.jsonl"
# ---------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import memplan  # noqa: E402
from memplan.harness import accuracy  # noqa: E402
from memplan.harness.accuracy import PhaseError  # noqa: E402
from memplan.report import EstimateRequest  # noqa: E402

MIB = 2**20
CATEGORIES = ("parameter", "buffer", "gradient", "optstate", "activation", "temp", "kv_cache", "logits", "other")
BY_CATEGORY = {cat: ((cat,), 1.0) for cat in CATEGORIES} | {"total": (("total",), 1.0)}
"""``accuracy.compare``'s component groups here: each category alone (its delta for the table) and the total
(tolerances unused: this benchmark reports, tests/test_sharded.py judges)."""


def request(model: str, algo: str, stage: int, n: int, version: int = 2) -> EstimateRequest:
    return EstimateRequest(model=model, algo=algo, gpus=f"{n}xH100-80GB", zero_stage=stage, fsdp_version=version,
                           **KNOBS)


def compare(req: EstimateRequest, traced) -> list[PhaseError]:  # noqa: ANN001 (a TraceReport)
    """Per phase of ``traced``: ``accuracy.compare`` of the estimate of ``req``, per category and in total."""
    return accuracy.compare(f"{req.algo} {req.zero_stage} {traced.world_size} v{req.fsdp_version}", traced,
                            memplan.estimate(req),
                            components=BY_CATEGORY)


def category_deltas(row: PhaseError) -> str:
    """Categories where estimate and trace differ by ≥ 1 MiB: 'name +est−traced MiB'."""
    deltas = ((cat, round(row.errors[cat] * row.traced_bytes)) for cat in CATEGORIES)  # the bytes back
    return ", ".join(f"{cat} {d / MIB:+,.0f}" for cat, d in deltas if abs(d) >= MIB) or "—"


def _summary(results: list, version: int) -> str:
    rows = [rows for *_, v, rows, _ in results if v == version]
    if not rows:
        return ""
    errors = [abs(r.error) for phase_rows in rows for r in phase_rows]
    peaks = [abs(max(phase_rows, key=lambda r: r.traced_bytes).error) for phase_rows in rows]
    return (f"**FSDP{version}: |error| over all {len(errors)} phases: median {statistics.median(errors):.1%}, max "
            f"{max(errors):.1%}. Peak phase of each run: median {statistics.median(peaks):.1%}, max "
            f"{max(peaks):.1%}.**")


def markdown(model: str, results: list[tuple[str, int, int, int, list[PhaseError], float]], command: str,
             wall: float) -> str:
    import torch
    import transformers

    lines = [
        "# Sharded runs: estimator vs traced rank 0 (FSDP2 and FSDP1)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; torch {torch.__version__}, transformers {transformers.__version__}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {wall / 60:.1f} min in all",
        "",
        f"Model {model}, {', '.join(f'{k}={v}' for k, v in KNOBS.items())}; GRPO group 8 (default). Traced: rank 0 "
        "of N under fake tensors and torch's fake process group; FSDP2: `fully_shard` per decoder layer and root, "
        "trained models fp32 with `MixedPrecisionPolicy(bf16, fp32)`; FSDP1: `FullyShardedDataParallel` with one "
        "FlatParameter per decoder layer and the root as verl's strategy fsdp wraps it (`MixedPrecision(bf16, fp32, "
        "fp32)`, `use_orig_params=False`, stage 3 FULL_SHARD, 2 SHARD_GRAD_OP); frozen models bf16 (stage 3: "
        "sharded); two training steps. Estimate: `memplan.estimate(..., engine='fsdp', fsdp_version=...)` − "
        "`fixed_bytes`. Error = (estimate − traced) / traced.",
        "",
        *(line for v in (2, 1) for line in (_summary(results, v), "") if _summary(results, v)),
        "| FSDP | algo | stage | N | phase | estimate GiB | traced GiB | error | traced peak at "
        "| estimate − traced by category (MiB) |",
        "|---:|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for algo, stage, n, v, rows, _ in results:
        for r in rows:
            lines.append(f"| {v} | {algo} | {stage} | {n} | {r.phase} | {r.estimate_bytes / 2**30:.2f} | "
                         f"{r.traced_bytes / 2**30:.2f} | {r.error:+.1%} | {r.peak_op} | {category_deltas(r)} |")
    lines += ["", "Trace seconds per run: " + ", ".join(f"v{v}/{a}/{s}/{n} {sec:.0f}"
                                                       for a, s, n, v, _, sec in results), ""]
    return "\n".join(lines)


def main() -> None:
    from memplan.harness.sharded import trace_sharded

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS))
    parser.add_argument("--stages", nargs="+", type=int, default=list(STAGES))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--versions", nargs="+", type=int, default=list(VERSIONS), help="fsdp_version: 2, 1")
    parser.add_argument("--trace-missing", action="store_true",
                        help="with --reuse: also trace the runs of --algos × --stages × --sizes × --versions the "
                             "file lacks, and append them to it")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--traces", type=Path, default=TRACES,
                        help=f"write every TraceReport to this JSON-lines file (default: {TRACES.name}; "
                             "not with --reuse)")
    parser.add_argument("--reuse", type=Path, help="compare the TraceReports of this JSON-lines file, trace nothing")
    args = parser.parse_args()
    start = time.perf_counter()
    results = []
    traces = None
    if not args.reuse and args.traces:
        args.traces.parent.mkdir(parents=True, exist_ok=True)
        traces = args.traces.open("w")
    if args.reuse:
        from memplan.harness.records import TraceReport

        kept = [TraceReport.model_validate_json(line) for line in args.reuse.read_text().splitlines() if line]
        runs = [(t.request.algo, t.request.zero_stage, t.world_size, t.request.fsdp_version, t) for t in kept]
        args.model = str(kept[0].request.model) if kept else args.model
        if args.trace_missing:
            have = {run[:4] for run in runs}
            runs += [(algo, stage, n, v, None) for v in args.versions for algo in args.algos for stage in args.stages
                     for n in args.sizes if (algo, stage, n, v) not in have]
            traces = args.reuse.open("a")
    else:
        runs = [(algo, stage, n, v, None) for v in args.versions for algo in args.algos for stage in args.stages
                for n in args.sizes]
    for algo, stage, n, v, traced in runs:
        req = traced.request if traced else request(args.model, algo, stage, n, v)
        fresh = traced is None
        traced = traced or trace_sharded(req, n)
        rows = compare(req, traced)
        results.append((algo, stage, n, v, rows, traced.seconds))
        if traces is not None and fresh:
            traces.write(traced.model_dump_json() + "\n")
            traces.flush()
        for r in rows:
            print(f"v{v} {algo:6s} stage {stage} N={n:<3d} {r.phase:14s} est {r.estimate_bytes / 2**30:7.2f} GiB "
                  f"traced {r.traced_bytes / 2**30:7.2f} GiB  {r.error:+6.1%}  {category_deltas(r)}", flush=True)
    if traces is not None:
        traces.close()
        print(f"wrote {args.reuse if args.reuse else args.traces}")
    command = "python benchmarks/sharded.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(args.model, results, command, time.perf_counter() - start))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
