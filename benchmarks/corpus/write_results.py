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

from memplan.validate import corpus_name, format_table, load_corpus, validate  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "validate.md"


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
