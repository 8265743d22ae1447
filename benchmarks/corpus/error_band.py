"""Write memplan's error band (memplan/catalog/error_band.json) from the corpus' residuals.

    python benchmarks/corpus/error_band.py

One command, re-run whenever the estimator or the corpus moves the residuals (``memplan validate``'s errors):
for each phase kind (``rollout``; ``training`` = scoring, actor_update, critic_update), the LOW_Q and HIGH_Q
quantiles of the residual d = measured − estimated over every record the corpus compares, and which
configurations the corpus covers (``memplan.estimator.band.configuration`` of each record's run). The estimator
states the band beside every estimate and calls a peak within it of capacity TIGHT (``memplan.estimator.band``);
it adds nothing to the estimate.

The band's form is chosen, per kind, by what describes the residuals — never a factor per case:

* ``relative``: d/T's quantiles (nearest rank), T the estimate — a miss proportional to the estimate;
* ``bytes``: d's quantiles (nearest rank) — a fixed-size miss (an engine's floor, the allocator's reserve);
* ``bytes+relative``: a linear quantile fit d ≈ a + b·T (the pinball loss minimised: b by golden-section search,
  a the quantile of d − b·T given b).

Each form is fitted with one source file held out and scored on it (the pinball loss of both quantiles, summed
over every held-out point: a proper score of quantiles, which rewards coverage and narrowness together and
charges the two-parameter form for what it overfits); the kind keeps the form with the smallest held-out loss.
The file keeps every form's fit, its held-out loss and coverage, and its in-sample coverage per third of the
estimates (small, middle, large) — benchmarks/results/validate.md prints them.

Why the 5th and 95th percentiles: a 90 % range, each end decided by ~10 of the ~200 points per kind; the 1st/99th
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



def _neutral_band() -> None:
    """The residuals do not depend on the band (it only names the verdict): estimate against a neutral one, so the
    script runs without the file it writes and never reads its own previous output. Done in ``main`` only: the
    fitting functions below import without touching the estimator's band (tests/test_band_forms.py)."""
    band.load = lambda: {"quantiles": [LOW_Q, HIGH_Q], "covered": {}, "kinds": {},  # type: ignore[assignment]
                         "widest": {"lower": 0.0, "upper": 0.0}}
    for cached in (band.bands, band._judged, band.label):
        cached.cache_clear()


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()


FORMS = ("relative", "bytes", "bytes+relative")


def _pinball(residual: float, q: float) -> float:
    """The quantile (pinball) loss of one point at quantile ``q``: q·r above the line, (q − 1)·r below."""
    return (q - (residual < 0)) * residual


def fit(form: str, estimates: list[int], residuals: list[int], q: float) -> tuple[float, int]:
    """The ``q`` quantile of the residuals (bytes) in ``form``: (relative part, bytes part)."""
    if form == "relative":
        return band.residual_band([d / t for d, t in zip(residuals, estimates)], q, q)[0], 0
    if form == "bytes":
        return 0.0, int(band.residual_band(residuals, q, q)[0])

    def loss(b: float) -> tuple[float, int]:
        a = band.residual_band([d - b * t for d, t in zip(residuals, estimates)], q, q)[0]
        return sum(_pinball(d - a - b * t, q) for d, t in zip(residuals, estimates)), int(a)

    lo, hi = -1.0, 1.0  # the relative part lies within ±100 % (every kind's does, by far); the loss is convex in b
    golden = (5 ** 0.5 - 1) / 2
    for _ in range(60):
        m1, m2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if loss(m1)[0] <= loss(m2)[0]:
            hi = m2
        else:
            lo = m1
    b = round((lo + hi) / 2, 4)
    return b, loss(b)[1]


def assess(form: str, points: list[tuple[str, int, int]]) -> dict:
    """Fit ``form`` on every point; its coverage per third of the estimates; and held out one source at a time:
    the summed pinball loss (bytes per point) and the coverage."""
    estimates, residuals = [t for _, t, _ in points], [d for _, _, d in points]
    (lower, lower_bytes), (upper, upper_bytes) = (fit(form, estimates, residuals, LOW_Q),
                                                  fit(form, estimates, residuals, HIGH_Q))
    ordered = sorted(estimates)
    cuts = (ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3])
    thirds = [[0, 0], [0, 0], [0, 0]]
    for t, d in zip(estimates, residuals):
        third = thirds[(t >= cuts[0]) + (t >= cuts[1])]
        third[0] += lower_bytes + lower * t <= d <= upper_bytes + upper * t
        third[1] += 1
    loss, covered = 0.0, 0
    for source in sorted({s for s, _, _ in points}):
        train = [(t, d) for s, t, d in points if s != source]
        te, td = [t for t, _ in train], [d for _, d in train]
        (lo, lo_b), (hi, hi_b) = fit(form, te, td, LOW_Q), fit(form, te, td, HIGH_Q)
        for s, t, d in points:
            if s == source:
                low, high = lo_b + lo * t, hi_b + hi * t
                loss += _pinball(d - low, LOW_Q) + _pinball(d - high, HIGH_Q)
                covered += low <= d <= high
    return {"lower": round(lower, 4), "lower_bytes": lower_bytes, "upper": round(upper, 4),
            "upper_bytes": upper_bytes, "held_out_pinball_bytes_per_point": int(loss / len(points)),
            "held_out_coverage": [covered, len(points)], "estimate_thirds_bytes": [min(ordered), *cuts, max(ordered)],
            "coverage_by_third": thirds}


def main() -> int:
    _neutral_band()
    records = load_corpus()
    summary = validate(records, corpus=(corpus_name(),))
    points: dict[str, list[tuple[str, int, int]]] = {kind: [] for kind in band.KINDS}  # (source, T, d)
    phases: dict[str, set[str]] = {kind: set() for kind in band.KINDS}
    covered: dict[str, set[str]] = {dim: set() for dim in band.DIMS}
    configurations: dict[str, set[tuple[str, ...]]] = {kind: set() for kind in band.KINDS}
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
        points[kind].append((r.source, r.estimated_bytes, r.compared_bytes - r.estimated_bytes))
        phases[kind].update(rec.phases)
        config = band.configuration(rec.request, resolve(rec.request))
        configurations[kind].add(config)
        for dim, value in zip(band.DIMS, config):
            covered[dim].add(value)
    kinds = {}
    for kind, pts in points.items():
        if not pts:  # no points: the estimator takes the widest band for it
            continue
        forms = {form: assess(form, pts) for form in FORMS}
        chosen = min(FORMS, key=lambda f: forms[f]["held_out_pinball_bytes_per_point"])
        relative = [d / t for _, t, d in pts]
        diffs = [d for _, _, d in pts]
        kinds[kind] = {
            "phases": list(band.KINDS[kind]),
            "phases_measured": sorted(phases[kind], key=band.KINDS[kind].index),
            "n": len(pts), "form": chosen,
            **{k: forms[chosen][k] for k in ("lower", "lower_bytes", "upper", "upper_bytes")},
            "relative": {"median": round(statistics.median(relative), 4), "min": round(min(relative), 4),
                         "max": round(max(relative), 4)},
            "bytes": {"median": int(statistics.median(diffs)), "min": min(diffs), "max": max(diffs)},
            "forms": forms,
        }
    if not kinds:
        raise SystemExit("no compared records in the corpus: no band")
    files = sorted(DEFAULT_CORPUS.glob("*.jsonl"))
    cuda = sorted((ROOT / "benchmarks" / "results" / "cuda").glob("*.json"))
    dirty = _git("status", "--porcelain", "--", "memplan", "benchmarks/corpus", "benchmarks/results/cuda")
    data = {
        "_doc": "memplan's error band: per phase kind, the quantiles of d = measured - estimated over the corpus' "
                "real-GPU measurements, in the form (relative, bytes, bytes+relative) whose held-out pinball loss "
                "is smallest. A phase estimated at T bytes has been T + lower_bytes + lower*T to T + upper_bytes + "
                "upper*T on real GPUs. Read by memplan/estimator/band.py; a configuration (all of 'covered''s "
                "dimensions together) outside its kind's 'configurations', or a phase outside its kind's "
                "'phases_measured', takes 'widest' (an extrapolation). Written by the "
                "command below; never edited by hand.",
        "quantity": "measured - estimated (bytes), per record of memplan validate",
        "quantiles": [LOW_Q, HIGH_Q],
        "method": "nearest rank (memplan.validate.percentile) for the relative and bytes forms; linear quantile fit "
                  "(pinball loss) for bytes+relative; the form chosen by the pinball loss with each source file held "
                  "out (benchmarks/corpus/error_band.py)",
        "provenance": {
            "command": COMMAND,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "memplan_commit": _git("rev-parse", "HEAD"),
            "working_tree": "modified (estimator or corpus differ from the commit)" if dirty else "clean",
            "corpus": [{"path": str(f.relative_to(ROOT)), "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                        "records": sum(1 for line in f.read_text().splitlines() if line.strip())}
                       for f in [*files, *cuda]],
            "records": len(records),
            "points": sum(len(v) for v in points.values()),
            "not_compared": sum(r.error is None for r in summary.results) + skipped,
        },
        "kinds": kinds,
        "widest": {"lower": min(k["lower"] for k in kinds.values()),
                   "lower_bytes": min(k["lower_bytes"] for k in kinds.values()),
                   "upper": max(k["upper"] for k in kinds.values()),
                   "upper_bytes": max(k["upper_bytes"] for k in kinds.values()), "from": list(kinds)},
        "covered": {dim: sorted(values) for dim, values in covered.items()},
        "configurations": {kind: sorted(list(c) for c in configs) for kind, configs in configurations.items()
                           if configs},
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    for kind, k in kinds.items():
        print(f"{kind:<9} n {k['n']:>4}  form {k['form']}: {band.describe(k['lower'], k['lower_bytes'])} .. "
              f"{band.describe(k['upper'], k['upper_bytes'])}")
        for form, f in k["forms"].items():
            print(f"    {form:<15} {band.describe(f['lower'], f['lower_bytes']):>16} .. "
                  f"{band.describe(f['upper'], f['upper_bytes']):<16} held out: pinball "
                  f"{f['held_out_pinball_bytes_per_point'] / 2**30:.3f} GiB/point, covers "
                  f"{f['held_out_coverage'][0]}/{f['held_out_coverage'][1]}; by third "
                  + " ".join(f"{a}/{b}" for a, b in f["coverage_by_third"]))
    w = data["widest"]
    print(f"widest    {band.describe(w['lower'], w['lower_bytes'])} .. {band.describe(w['upper'], w['upper_bytes'])}; "
          "covered: " + "; ".join(f"{d}={','.join(v)}" for d, v in data["covered"].items()))
    print(f"-> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
