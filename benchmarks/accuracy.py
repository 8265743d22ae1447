"""Accuracy table: estimator vs tracer (world size 1 and sharded rank 0) vs CUDA records, with the peers beside.

    python benchmarks/accuracy.py                      # trace every case of CASES and PACKED_CASES (~45 min)
    python benchmarks/accuracy.py --reuse              # re-estimate the committed traces (seconds)
    python benchmarks/accuracy.py --cases "ppo tiny-llama" "sft qwen2.5-1.5b"     # a subset, traced

Sources of each column:
* traced — ``memplan.harness.trace`` (fake tensors on the CPU, two training steps, world size 1), kept in
  benchmarks/results/accuracy_traces.jsonl; sharded rows: rank 0 of N under FSDP2 and a fake process group,
  kept by benchmarks/sharded.py in benchmarks/results/sharded_traces.jsonl.
* estimate — ``memplan.estimate`` of the same request now, net of ``fixed_bytes`` (no trace sees the CUDA
  context, cuBLAS workspace or NCCL buffers).
* measured — CUDA records under benchmarks/results/cuda/ (``memplan measure``); none are committed until a
  session is lent a GPU.
* peers — benchmarks/results/peers.json, written by benchmarks/peers.py in its own environment (DeepSpeed's
  ZeRO model-state estimators, accelerate's estimate-memory, llm-analysis), for the actor alone.

Writes benchmarks/results/accuracy.md (command, machine, date).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder

# --- configuration -------------------------------------------------------------------------------------
RESULTS = Path(__file__).parent / "results"
TRACES = RESULTS / "accuracy_traces.jsonl"
TRACES_META = RESULTS / "accuracy_traces.meta.json"  # how and when the kept traces were made
SHARDED_TRACES = RESULTS / "sharded_traces.jsonl"
PEERS = RESULTS / "peers.json"
CUDA_RECORDS = RESULTS / "cuda"
OUT = RESULTS / "accuracy.md"
# ---------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memplan.harness.accuracy import (  # noqa: E402
    CASES, COMPONENTS, MEDIAN_TARGET, PACKED_CASES, PACKED_COMPONENTS, PhaseError, compare, request,
)
from memplan.harness.records import TraceReport  # noqa: E402

GIB = 2**30


def traces_line() -> str:
    if not TRACES_META.exists():
        return f"{TRACES.name} (no record of how it was made)"
    m = json.loads(TRACES_META.read_text())
    line = f"`{m['command']}`, {m['date']}, {m['minutes']} min on {m['machine']}"
    for a in m.get("added", []):  # cases traced later with --cases
        line += f"; then `{a['command']}`, {a['date']}, {a['minutes']} min on {a['machine']}"
    return line + f" (kept in {TRACES.name})"


def load_traces(path: Path) -> list[TraceReport]:
    if not path.exists():
        return []
    return [TraceReport.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def case_of(t: TraceReport) -> str:
    """The CASES (or PACKED_CASES) name of a kept trace (by request), or a name made from the sharded request."""
    for name in [*CASES, *PACKED_CASES]:
        if request(name) == t.request:
            return name
    r = t.request
    return f"{r.algo} {str(r.model).split('/')[-1].lower()} {r.engine} z{r.zero_stage} N={t.world_size}"


def peer_columns(t: TraceReport, peers: list[dict]) -> str:
    """The peers' figures (GiB) for the actor of ``t``'s request: DeepSpeed ZeRO-2/3 model states,
    accelerate's training column, llm-analysis; '—' where the peer has no figure."""
    r = t.request
    stage = r.zero_stage
    for p in peers:
        if (p.get("model") == r.model and p.get("gpus") == t.world_size and
                p.get("gradient_checkpointing", r.gradient_checkpointing) == r.gradient_checkpointing and
                (t.world_size == 1 or p.get("zero_stage") == stage)):
            vals = p.get("peers", {})

            def cell(key: str) -> str:
                v = vals.get(key)
                return f"{v / GIB:.1f}" if isinstance(v, (int, float)) else "—"

            ds = cell("deepspeed_zero3" if stage == 3 else "deepspeed_zero2")
            return f"{ds} | {cell('accelerate_training')} | {cell('llm_analysis')}"
    return "— | — | —"


def phase_table(rows: list[tuple[TraceReport, list[PhaseError]]], peers: list[dict], with_peers: bool,
                show_tokens: bool = False) -> list[str]:
    names = " | ".join(COMPONENTS)
    head = f"| case | phase | estimate GiB | traced GiB | {names} | traced peak at |"
    sep = "|---|---|---:|---:|" + "---:|" * len(COMPONENTS) + "---|"
    if with_peers:
        head += " DeepSpeed GiB | accelerate GiB | llm-analysis GiB |"
        sep += "---:|---:|---:|"
    if show_tokens:
        head += " packed tokens (train / score) |"
        sep += "---|"
    lines = [head, sep]
    for t, phase_rows in rows:
        peak = max(phase_rows, key=lambda p: p.traced_bytes)
        for p in phase_rows:
            errs = " | ".join(f"{p.errors[n]:+.2%}{' !' if n in p.over_tolerance() else ''}" for n in COMPONENTS)
            name = f"**{p.case}**" if p is phase_rows[0] else ""
            line = (f"| {name} | {p.phase}{' (peak)' if p is peak else ''} | {p.estimate_bytes / GIB:.3f} | "
                    f"{p.traced_bytes / GIB:.3f} | {errs} | {p.peak_op} |")
            if with_peers:
                line += f" {peer_columns(t, peers) if p is peak else ' |  | '} |"
            if show_tokens:
                line += f" {packed_tokens(t) if p is phase_rows[0] else ''} |"
            lines.append(line)
    return lines


def packed_tokens(t: TraceReport) -> str:
    """The traced micro batches of a packed case: sequences × tokens, training / scoring (``setup.resolve``)."""
    from memplan.harness.setup import resolve

    s = resolve(t.request)
    if not s.packed_lengths:
        return "padded"
    return " / ".join(f"{len(p)} × {p[0]} = {sum(p)}" for p in (s.packed_lengths, s.score_packed_lengths))


def stats_line(rows: list[PhaseError]) -> str:
    errors = [abs(r.error) for r in rows]
    if not errors:
        return "no rows"
    return (f"median |error| {statistics.median(errors):.2%}, max {max(errors):.2%} over {len(errors)} phases "
            f"(target: median ≤ {MEDIAN_TARGET:.0%})")


def cuda_section() -> list[str]:
    files = sorted(CUDA_RECORDS.glob("*.json")) if CUDA_RECORDS.exists() else []
    if not files:
        return ["No CUDA records are committed: no session of this project has been lent a GPU yet "
                "(`memplan measure` writes them; tests/test_records.py checks the estimator against each).", ""]
    import memplan
    from memplan.harness.records import CudaRecord

    lines = ["| record | GPU | estimate GiB | traced GiB | measured (allocated) GiB | error vs measured |",
             "|---|---|---:|---:|---:|---:|"]
    for f in files:
        rec = CudaRecord.model_validate_json(f.read_text())
        est = memplan.estimate(rec.request)
        measured = rec.peak_allocated_bytes
        net = est.peak_bytes_per_gpu - est.fixed_bytes
        traced = f"{rec.traced_peak_bytes / GIB:.2f}" if rec.traced_peak_bytes else "—"
        lines.append(f"| {f.name} | {rec.gpu_name} | {net / GIB:.2f} | {traced} | {measured / GIB:.2f} | "
                     f"{(net - measured) / measured:+.1%} |")
    return [*lines, ""]


def machine_and_versions() -> str:
    import torch
    import transformers

    return f"{machine()}; torch {torch.__version__}, transformers {transformers.__version__}"


def markdown(single, sharded, peers, peers_meta, command: str, wall: float, packed=()) -> str:  # noqa: ANN001
    all_single = [p for _t, rows in single for p in rows]
    all_sharded = [p for _t, rows in sharded for p in rows]
    real_runs = [(t, rows) for t, rows in single if not str(t.request.model).startswith("memplan/tiny")]
    real, n_real = [p for _t, rows in real_runs for p in rows], len(real_runs)
    tolerances = ", ".join(f"{n} ±{tol:.0%}" for n, (_c, tol) in COMPONENTS.items())
    lines = [
        "# Accuracy: estimator vs tracer vs CUDA, with the peers",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_and_versions()}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {wall / 60:.1f} min in all  ",
        f"Traces (world size 1): {traces_line()}",
        "",
        "Error = (estimate − traced) / traced peak of the phase, per component group (memplan/harness/accuracy.py): "
        "`states` = parameter + buffer + gradient + optimizer state, `transients` = activation + temp + KV cache + "
        f"logits + other, `total`. Tolerances: {tolerances} ('!' marks a component over it). The estimate is net "
        "of its fixed costs (CUDA context, cuBLAS workspace, NCCL), which no trace sees.",
        "",
        "## Summary",
        "",
        f"* World size 1, all {len(single)} configurations: {stats_line(all_single)}.",
        f"* World size 1, the {n_real} real-size configurations: {stats_line(real)}.",
        f"* Sharded (FSDP2, rank 0 of N), {len(sharded)} runs: {stats_line(all_sharded)}.",
        "",
        "## World size 1 (every resident model in full on one GPU)",
        "",
        "Request: `gpus=1xH100-80GB, prompt_len=256, gen_len=256` plus each case's fields "
        "(memplan/harness/accuracy.py `CASES`); bf16 with fp32 AdamW states and masters (DeepSpeed engine "
        "defaults). Peers: the actor alone, one GPU, same batch and length (benchmarks/results/peers.md).",
        "",
        *phase_table(single, peers, with_peers=bool(peers)),
        "",
    ]
    if packed:
        packed_tolerances = ", ".join(f"{n} ±{tol:.0%}" for n, (_c, tol) in PACKED_COMPONENTS.items())
        lines += ["## Packed micro batches and the entropy (issue 17; world size 1)", "",
                  "Each packed forward is one [1, T] row with position ids restarting per sequence, through a "
                  "varlen attention stand-in with flash-attn's allocations (memplan/harness/packing.py, "
                  "docs/tracer-packing.md); every sequence is prompt_len + gen_len_mean tokens, a token cap holds "
                  "⌊cap / length⌋ of them. The entropy is verl's (eager, or fp32-chunked) or TRL's (chunked), taken "
                  f"where `entropy` says. Tolerances (`PACKED_COMPONENTS`): {packed_tolerances}. "
                  f"{stats_line([p for _t, rows in packed for p in rows])}.", "",
                  *phase_table(list(packed), peers, with_peers=False, show_tokens=True), ""]
    if sharded:
        lines += ["## Sharded: FSDP2 rank 0 of N (ZeRO-2-like: reshard_after_forward=False, ZeRO-3-like: True)", "",
                  "Traces from benchmarks/results/sharded_traces.jsonl (benchmarks/sharded.py), re-estimated now.",
                  "", *phase_table(sharded, peers, with_peers=bool(peers)), ""]
    lines += ["## CUDA records", "", *cuda_section()]
    if peers_meta:
        lines += ["## Peers", "", f"From benchmarks/results/peers.json ({peers_meta.get('command', '')}, "
                  f"{peers_meta.get('date', '')}); versions: {peers_meta.get('versions', {})}. Each covers the "
                  "actor alone; benchmarks/results/peers.md says which terms each one misses.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="trace only these CASES (default: all)")
    parser.add_argument("--reuse", action="store_true", help=f"re-estimate {TRACES.name}, trace nothing")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    start = time.perf_counter()
    kept = {case_of(t): t for t in load_traces(TRACES)}
    if not args.reuse:
        from memplan.harness import trace

        for name in args.cases or [*CASES, *PACKED_CASES]:
            kept[name] = trace(request(name))
            print(f"traced {name}: {kept[name].peak_bytes / GIB:.3f} GiB in {kept[name].seconds:.0f} s", flush=True)
        TRACES.write_text("".join(kept[n].model_dump_json() + "\n" for n in [*CASES, *PACKED_CASES] if n in kept))
        run = dict(command="python benchmarks/accuracy.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]),
                   date=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", machine=machine(),
                   minutes=round((time.perf_counter() - start) / 60, 1))
        if args.cases and TRACES_META.exists():  # the other traces keep their record; this run is added to it
            meta = json.loads(TRACES_META.read_text())
            run = {**meta, "added": [*meta.get("added", []), run]}
        TRACES_META.write_text(json.dumps(run, indent=1) + "\n")
    single = [(kept[n], compare(n, kept[n])) for n in CASES if n in kept]
    packed = [(kept[n], compare(n, kept[n], components=PACKED_COMPONENTS)) for n in PACKED_CASES if n in kept]
    sharded = [(t, compare(case_of(t), t)) for t in load_traces(SHARDED_TRACES)]
    peers_doc = json.loads(PEERS.read_text()) if PEERS.exists() else {}
    peers = peers_doc.get("rows", peers_doc if isinstance(peers_doc, list) else [])
    meta = {k: v for k, v in peers_doc.items() if k != "rows"} if isinstance(peers_doc, dict) else {}
    for _t, rows in single + packed + sharded:
        for p in rows:
            print(f"{p.case:32s} {p.phase:14s} est {p.estimate_bytes / GIB:8.3f} traced {p.traced_bytes / GIB:8.3f} "
                  f"{p.error:+7.2%}")
    command = "python benchmarks/accuracy.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    args.out.write_text(markdown(single, sharded, peers, meta, command, time.perf_counter() - start, packed))
    print(f"{stats_line([p for _t, rows in single for p in rows])}\nwrote {args.out}")


if __name__ == "__main__":
    main()
