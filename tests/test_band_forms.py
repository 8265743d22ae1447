"""The error band's forms (issue 16, part 3): relative, bytes and bytes+relative fits worked by hand, the form kept by
the held-out pinball loss, and what a bytes band says of a big run that a relative one could not.

``benchmarks/corpus/error_band.py`` fits the band; ``memplan.estimator.band`` reads it. Every expected number is
worked here in a comment; none comes from the corpus except where the test says it reads the band file.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import memplan
from memplan.estimator import band
from memplan.estimator.resolve import resolve
from memplan.units import GiB

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("error_band", ROOT / "benchmarks" / "corpus" / "error_band.py")
error_band = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(error_band)  # import-safe: the neutral band is set in its main() only
BAND = json.loads(band.BAND_FILE.read_text())
MiB = 2**20


def test_importing_the_fitter_leaves_the_estimators_band_alone():
    assert band.load()["kinds"] == BAND["kinds"]


def test_bytes_and_relative_forms_by_hand():
    # 20 points: estimates T of 1..20 GiB, each measured 300 MiB over (a fixed-size miss) except one 900 MiB over
    estimates = [t * GiB for t in range(1, 21)]
    residuals = [300 * MiB] * 19 + [900 * MiB]
    # bytes form: nearest rank over d; p5 = 1st smallest = 300 MiB, p95 = ceil(0.95 × 20) = 19th smallest = 300 MiB
    assert error_band.fit("bytes", estimates, residuals, 0.05) == (0.0, 300 * MiB)
    assert error_band.fit("bytes", estimates, residuals, 0.95) == (0.0, 300 * MiB)
    # relative form: d/T = 300 MiB / T falls from 0.293 (T = 1 GiB) to 0.0146 (T = 20 GiB; 900 MiB / 20 GiB =
    # 0.0439 for the last point): p5 = the smallest = 300/19456 = 0.01542 (T = 19 GiB), p95 = the 19th smallest,
    # i.e. the 2nd largest = 300/2048 = 0.1465 (T = 2 GiB; the largest is 300/1024 at T = 1 GiB)
    lo, _ = error_band.fit("relative", estimates, residuals, 0.05)
    hi, _ = error_band.fit("relative", estimates, residuals, 0.95)
    assert math.isclose(lo, 300 / (19 * 1024)) and math.isclose(hi, 300 / 2048)


def test_bytes_plus_relative_recovers_a_line():
    # d = 200 MiB + 5 % of T exactly, for T = 1..30 GiB: the linear quantile fit of any quantile is that line (its
    # pinball loss is 0 there); the golden-section search on b is within 1e-4 of 0.05, a within the rounding of b
    estimates = [t * GiB for t in range(1, 31)]
    residuals = [200 * MiB + int(0.05 * t) for t in estimates]
    for q in (0.05, 0.95):
        b, a = error_band.fit("bytes+relative", estimates, residuals, q)
        assert abs(b - 0.05) <= 1e-4
        assert abs(a - 200 * MiB) <= 1e-4 * 30 * GiB  # b's rounding times the largest T


def test_held_out_loss_keeps_the_form_that_describes_the_misses():
    # three sources of fixed-size misses (250–350 MiB) at very different estimates: a bytes band carries over
    # from two sources to the third; a relative band fitted on small runs is far too wide on big ones (and too
    # narrow the other way round), so its held-out pinball loss is larger
    points = [(source, t * GiB, (250 + 10 * i) * MiB)
              for source, sizes in (("small", range(1, 5)), ("middle", range(8, 12)), ("big", range(30, 34)))
              for i, t in enumerate(sizes)]
    scored = {form: error_band.assess(form, points) for form in error_band.FORMS}
    assert min(scored, key=lambda f: scored[f]["held_out_pinball_bytes_per_point"]) == "bytes"
    assert scored["bytes"]["held_out_coverage"][1] == len(points) == 12


def test_describe():
    assert band.describe(0.0, int(1.85 * GiB)) == "+1.85 GiB"
    assert band.describe(-0.061, 0) == "-6.1%"
    assert band.describe(0.017, int(0.5 * GiB)) == "+1.7% +0.50 GiB"
    assert band.describe(0.0, 0) == "+0.0%"


def test_a_big_covered_run_is_judged_by_its_kinds_band():
    """The brief's case: a 38 GiB training estimate on an A100-40GB (39.49 GiB usable), in the corpus' own
    configuration: its band is the training kind's, in the form the held-out loss chose (read here from the band
    file: relative on 2026-12-07 23:55, after the Gemma-4 records; bytes before them), 38 GiB × (1 + upper) +
    upper_bytes at the high end, and TIGHT exactly when that end passes capacity."""
    k = BAND["kinds"]["training"]
    assert k["form"] in error_band.FORMS
    report = memplan.estimate(model="Qwen/Qwen2.5-1.5B-Instruct", algo="grpo", gpus="1xA100-40GB", engine="torch",
                              lora_rank=16, group_size=4, rollout_engine="vllm", vllm_gpu_memory_utilization=0.45,
                              gradient_checkpointing=True)
    config = band.configuration(report.request, resolve(report.request))
    b = band.bands(config)["actor_update"]
    assert b.basis == "training"  # covered: the corpus' own configuration
    assert (b.lower, b.upper, b.lower_bytes, b.upper_bytes) == (k["lower"], k["upper"], k["lower_bytes"],
                                                                k["upper_bytes"])
    total = 38 * GiB
    high = int(total * b.high_factor) + b.upper_bytes
    assert high == int(total * (1 + k["upper"])) + k["upper_bytes"]
    capacity = report.capacity_bytes  # 42,404,806,656 B = 39.49 GiB (torch total_memory, AgileRL's A100 fixtures)
    assert high > capacity  # 38 GiB is within the band of 39.49: TIGHT whichever form (+32 % or +2.45 GiB today)
    small = int(20 * GiB * b.high_factor) + b.upper_bytes
    assert small <= capacity  # 20 GiB is not


def test_validate_counts_the_measurements_inside_the_band():
    """``memplan validate``'s 'in band' column, recounted from the band file's numbers: a record is inside when
    measured lies in [T + lower_bytes + lower·T, T + upper_bytes + upper·T] (truncated as the estimator truncates),
    T the compared estimate; every AgileRL record is of the corpus' own configuration, so its kind's band applies."""
    from memplan.validate import load_corpus, validate

    summary = validate(load_corpus())
    for group, kind in (("rollout", "rollout"), ("scoring+actor_update", "training")):
        k = BAND["kinds"][kind]
        inside = 0
        for r in summary.results:
            if r.group != group or r.error is None:
                continue
            t = r.estimated_bytes
            low = int(t * (1 + k["lower"])) + k["lower_bytes"]
            high = int(t * (1 + k["upper"])) + k["upper_bytes"]
            inside += low <= r.compared_bytes <= high
            assert r.in_band == (low <= r.compared_bytes <= high), r.id
        assert summary.group(group).in_band == inside
        # p5..p95 by nearest rank over the same residuals: ranks ceil(0.05 n) to ceil(0.95 n) inclusive (11th to
        # 198th of 208: 188 points, at least 0.9 n), less the two end points that truncating T·(1 + r) to whole
        # bytes can move outside
        assert inside >= 0.9 * summary.group(group).n - 2
