"""One GPU session's measurements, prepared here so that a lent GPU's minutes go to measuring, not to typing.

    python benchmarks/gpu_session.py --dry-run             # here, no GPU: each case's request and estimate
    python benchmarks/gpu_session.py --out "$OUT"          # on the lent GPU (below), inside its time limit

What it writes under ``--out`` (each file comes back from the device tool, at most 8 files: the cases' records are
folded into one file):

* ``device_facts.json`` — the device as torch and NVML see it, in a fresh process: torch's ``total_memory``,
  NVML's v1 total and used before and after creating the CUDA context (the context's size, as AgileRL measured
  its A100 and L4 contexts), NVML's v2 ``reserved`` where the driver has it (the driver's reserve that
  ``memplan.validate`` nets out of NVML peaks), driver and CUDA versions. The catalog's capacity and context for
  this GPU come from here (``memplan/catalog/gpus.json``, ``memory_basis`` / ``cuda_context_basis``).
* ``cuda_records.jsonl`` — one ``CudaRecord`` per case (``memplan.harness.cuda.measure_cuda``: two training steps,
  torch's allocated and reserved peaks and NVML's per phase), each case in its own process so that each has a
  clean CUDA context and allocator. Split it into ``benchmarks/results/cuda/<case>.json`` here
  (``--split FILE``, ``--out`` its default): ``memplan validate`` then compares them (``records_from_cuda``),
  ``tests/test_records.py`` holds the estimator to them.
* ``session.log`` — what ran, how long, what failed.

The cases: ``CASES`` below, real-size configurations of ``memplan.harness.accuracy.CASES`` that fit one 80 GB GPU
with what the device image has (torch, transformers, peft; no vLLM, no DeepSpeed), most informative first, each
under ``--case-timeout``; the loop stops starting cases when ``--budget`` seconds have passed.

On the device tool (its README: wheels for what the image lacks), from the repository root here:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pydantic==2.* pydantic-core \\
        annotated-types typing-inspection    # versions as `pip show pydantic` says here
    run(command="python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && "
                "export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/gpu_session.py --out $OUT",
        carry=[".whl"], timeout_s=560)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = (
    # the corpus' own kind of run (GRPO, LoRA) and each algorithm once, on Qwen2.5-0.5B (seconds each)
    "grpo qwen2.5-0.5b", "ppo qwen2.5-0.5b lora", "ppo qwen2.5-0.5b", "dpo qwen2.5-0.5b", "remax qwen2.5-0.5b",
    "rloo qwen2.5-0.5b", "sft qwen2.5-0.5b batch 4", "grpo qwen2.5-0.5b chunked",
    # checkpointing and larger models
    "grpo qwen2.5-1.5b lora gc", "ppo llama-3.2-1b gc", "remax llama-3.2-1b gc", "dpo llama-3.2-1b gc",
    "sft llama-3.2-3b gc", "grpo llama-2-7b lora gc",
)
CAPACITY_80GB = 79 * 2**30  # cases whose estimate exceeds an 80 GB card's capacity are left out

FACTS = r"""
import json, torch, pynvml as n
n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0)
before = n.nvmlDeviceGetMemoryInfo(h)
torch.cuda.init(); torch.empty(1, device="cuda"); torch.cuda.synchronize()
after = n.nvmlDeviceGetMemoryInfo(h)
facts = {"name": torch.cuda.get_device_name(0), "torch_total_bytes": torch.cuda.get_device_properties(0).total_memory,
         "nvml_v1_total_bytes": before.total, "nvml_v1_used_before_bytes": before.used,
         "nvml_v1_used_after_context_bytes": after.used, "context_bytes": after.used - before.used,
         "torch_mem_get_info": list(torch.cuda.mem_get_info()), "driver": n.nvmlSystemGetDriverVersion(),
         "cuda": torch.version.cuda, "torch": torch.__version__}
try:
    v2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    facts.update(nvml_v2_total_bytes=v2.total, nvml_v2_reserved_bytes=v2.reserved, nvml_v2_used_bytes=v2.used)
except Exception as e:  # an older driver or binding
    facts["nvml_v2"] = f"unavailable: {e}"
print(json.dumps(facts))
"""

ONE_CASE = r"""
import sys
from memplan.harness.accuracy import request
from memplan.harness.cuda import measure_cuda
print(measure_cuda(request(sys.argv[1]), out_dir=None, with_trace=False).model_dump_json())
"""


def planned(cases: tuple[str, ...]) -> list[tuple[str, int]]:
    """The cases that fit an 80 GB GPU by memplan's own estimate, with that estimate (no torch needed)."""
    from memplan.estimator import estimate
    from memplan.harness.accuracy import request

    out = []
    for case in cases:
        peak = estimate(request(case)).peak_bytes_per_gpu
        if peak <= CAPACITY_80GB:
            out.append((case, peak))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cuda")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which no new case starts")
    ap.add_argument("--case-timeout", type=float, default=120.0)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--dry-run", action="store_true", help="no GPU: list the cases and their estimates")
    ap.add_argument("--split", type=Path, help="split a cuda_records.jsonl into benchmarks/results/cuda/<case>.json")
    args = ap.parse_args(argv)
    if args.split:
        return split(args.split, args.out)
    cases = planned(tuple(args.cases))
    if args.dry_run:
        for case, peak in cases:
            print(f"{case:<32} estimate {peak / 2**30:7.2f} GiB")
        print(f"{len(cases)} of {len(args.cases)} cases fit an 80 GB GPU by the estimate")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "session.log").open("w")
    start = time.perf_counter()
    facts = subprocess.run([sys.executable, "-c", FACTS], capture_output=True, text=True, timeout=60)
    (args.out / "device_facts.json").write_text(facts.stdout or json.dumps({"error": facts.stderr[-2000:]}))
    print(f"device facts: rc {facts.returncode}", file=log, flush=True)
    with (args.out / "cuda_records.jsonl").open("w") as records:
        for case, peak in cases:
            if time.perf_counter() - start > args.budget:
                print(f"{case}: not started (budget)", file=log, flush=True)
                continue
            t0 = time.perf_counter()
            try:
                run = subprocess.run([sys.executable, "-c", ONE_CASE, case], capture_output=True, text=True,
                                     timeout=args.case_timeout, cwd=ROOT)
            except subprocess.TimeoutExpired:
                print(f"{case}: timed out after {args.case_timeout:.0f} s", file=log, flush=True)
                continue
            line = run.stdout.strip().splitlines()[-1] if run.returncode == 0 and run.stdout.strip() else ""
            if line:
                records.write(json.dumps({"case": case, "record": json.loads(line)}) + "\n")
                records.flush()
            print(f"{case}: rc {run.returncode}, {time.perf_counter() - t0:.0f} s, estimate {peak / 2**30:.2f} GiB"
                  + ("" if line else f"; {run.stderr[-600:]}"), file=log, flush=True)
    return 0


def split(path: Path, out: Path) -> int:
    """Write each record of a session's ``cuda_records.jsonl`` to ``out``/<case>.json (benchmarks/results/cuda/)."""
    from memplan.harness.records import CudaRecord

    out.mkdir(parents=True, exist_ok=True)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        record = CudaRecord.model_validate(entry["record"])
        name = entry["case"].replace(" ", "_").replace(".", "_")
        (out / f"{name}.json").write_text(record.model_dump_json(indent=1) + "\n")
        print(f"-> {out / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
