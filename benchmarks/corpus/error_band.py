"""Write memplan's error band (memplan/catalog/error_band.json) from the corpus' residuals.

    python benchmarks/corpus/error_band.py

One command, re-run whenever the estimator or the corpus moves the residuals (``memplan validate``'s errors):
for each phase kind (``rollout``; ``training`` = scoring, actor_update, critic_update), the LOW_Q and HIGH_Q
quantiles (nearest rank) of r = (measured − estimated) / estimated over every record the corpus compares, and
which configurations the corpus covers (``memplan.estimator.band.configuration`` of each record's run). The
estimator states the band beside every estimate and calls a peak within it of capacity TIGHT
(``memplan.estimator.band``); it adds nothing to the estimate.

Why r = (measured − estimated) / estimated, not validate's (estimated − measured) / measured: the band is read
from an estimate T — the real total is T·(1 + r) — so r must be relative to the estimate.
Why the 5th and 95th percentiles: a 90 % range, each end decided by ~9 of the 187 points per kind; the 1st/99th
would rest on the two or three worst points (the long-context records measured on a floor a previous process
left; benchmarks/corpus/README.md), the 10th/90th would leave a fifth of the measured runs outside.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from memplan.estimator import band  # noqa: E402
from memplan.estimator.resolve import resolve  # noqa: E402
from memplan.validate import DEFAULT_CORPUS, corpus_name, load_corpus, validate  # noqa: E402

LOW_Q, HIGH_Q = 0.05, 0.95
OUT = band.BAND_FILE
COMMAND = "python benchmarks/corpus/error_band.py"

# the residuals do not depend on the band (it only names the verdict): estimate against a neutral one, so the
# script runs without the file it writes and never reads its own previous output
band.load = lambda: {"quantiles": [LOW_Q, HIGH_Q], "covered": {}, "kinds": {},  # type: ignore[assignment]
                     "widest": {"lower": 0.0, "upper": 0.0}}
for cached in (band.bands, band._judged, band.label):
    cached.cache_clear()


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()


def main() -> int:
    records = load_corpus()
    summary = validate(records, corpus=(corpus_name(),))
    residuals: dict[str, list[float]] = {kind: [] for kind in band.KINDS}
    phases: dict[str, set[str]] = {kind: set() for kind in band.KINDS}
    covered: dict[str, set[str]] = {dim: set() for dim in band.DIMS}
    skipped = 0
    for rec, r in zip(records, summary.results, strict=True):
        assert rec.id == r.id
        if r.error is None:  # not expressible yet, or an outcome only
            continue
        kinds = {band.PHASE_KIND[p] for p in rec.phases}
        if len(kinds) != 1:  # a window over phases of both kinds says nothing about either alone
            skipped += 1
            continue
        kind = kinds.pop()
        residuals[kind].append((r.measured_bytes - r.estimated_bytes) / r.estimated_bytes)
        phases[kind].update(rec.phases)
        for dim, value in zip(band.DIMS, band.configuration(rec.request, resolve(rec.request))):
            covered[dim].add(value)
    kinds = {}
    for kind, values in residuals.items():
        if not values:  # no points: the estimator takes the widest band for it
            continue
        lower, upper = band.residual_band(values, LOW_Q, HIGH_Q)
        kinds[kind] = {
            "phases": list(band.KINDS[kind]),
            "phases_measured": sorted(phases[kind], key=band.KINDS[kind].index),
            "n": len(values), "lower": round(lower, 4), "upper": round(upper, 4),
            "median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4),
        }
    if not kinds:
        raise SystemExit("no compared records in the corpus: no band")
    files = sorted(DEFAULT_CORPUS.glob("*.jsonl"))
    cuda = sorted((ROOT / "benchmarks" / "results" / "cuda").glob("*.json"))
    dirty = _git("status", "--porcelain", "--", "memplan", "benchmarks/corpus", "benchmarks/results/cuda")
    data = {
        "_doc": "memplan's error band: per phase kind, the quantiles of r = (measured - estimated) / estimated over "
                "the corpus' real-GPU measurements (nearest rank). A phase estimated at T bytes has been "
                "T*(1+lower) to T*(1+upper) on real GPUs. Read by memplan/estimator/band.py; a configuration "
                "outside 'covered', or a phase outside its kind's 'phases_measured', takes 'widest' (an "
                "extrapolation). Written by the command below; never edited by hand.",
        "quantity": "(measured - estimated) / estimated, per record of memplan validate",
        "quantiles": [LOW_Q, HIGH_Q],
        "method": "nearest rank (memplan.validate.percentile)",
        "provenance": {
            "command": COMMAND,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "memplan_commit": _git("rev-parse", "HEAD"),
            "working_tree": "modified (estimator or corpus differ from the commit)" if dirty else "clean",
            "corpus": [{"path": str(f.relative_to(ROOT)), "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                        "records": sum(1 for line in f.read_text().splitlines() if line.strip())}
                       for f in [*files, *cuda]],
            "records": len(records),
            "points": sum(len(v) for v in residuals.values()),
            "not_compared": sum(r.error is None for r in summary.results) + skipped,
        },
        "kinds": kinds,
        "widest": {"lower": min(k["lower"] for k in kinds.values()), "upper": max(k["upper"] for k in kinds.values()),
                   "from": list(kinds)},
        "covered": {dim: sorted(values) for dim, values in covered.items()},
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    for kind, k in kinds.items():
        print(f"{kind:<9} n {k['n']:>4}  p{round(100 * LOW_Q)} {k['lower']:+.1%}  p{round(100 * HIGH_Q)} "
              f"{k['upper']:+.1%}  (median {k['median']:+.1%}, min {k['min']:+.1%}, max {k['max']:+.1%})")
    print(f"widest    {data['widest']['lower']:+.1%} .. {data['widest']['upper']:+.1%}; covered: "
          + "; ".join(f"{d}={','.join(v)}" for d, v in data["covered"].items()))
    print(f"-> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
