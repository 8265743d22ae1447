"""memplan's error band: how far its phase totals have been from real GPUs, stated beside every estimate.

The band is data (``memplan/catalog/error_band.json``), written by ``python benchmarks/corpus/error_band.py`` from
``memplan validate``'s residuals over the measurement corpus (benchmarks/corpus/). For each phase kind it gives the
5th and 95th percentiles (nearest rank) of the residual d = measured − estimated in the form that describes the
corpus: ``lower_bytes + lower·T`` to ``upper_bytes + upper·T`` for a phase estimated at T bytes. Three forms are
fitted — relative (bytes parts 0: d/T's quantiles), bytes (relative parts 0: d's quantiles), bytes-plus-relative
(a linear quantile fit) — and the kind keeps the one with the smallest pinball loss when each source file is held
out in turn (``error_band.py``; benchmarks/results/validate.md shows all three and their coverage). A phase whose
estimate is T may then be T + lower_bytes + lower·T to T + upper_bytes + upper·T on a real GPU — the range in which
90 % of the corpus' measurements fell around their estimates. Where the corpus' misses are fixed-size (a sleeping
engine's floor, the allocator's reserve: the training kind), the band is bytes, and a 38 GiB estimate is not
called TIGHT on a 40 GiB GPU for a proportional spread measured on 2 GiB runs (the relative form's p95 was
+63.8 % on 2026-12-07). The estimate itself is never changed: the
band is a statement beside it.

Phase kinds: ``rollout``, and ``training`` (scoring, actor_update, critic_update: a training window of the corpus
covers the scoring forwards and the update). A phase takes its kind's band only when the corpus holds points
for that phase *and* for the run's configuration (``configuration``: algorithm, engine, one GPU or several,
rollout engine, LoRA or full fine-tuning, placement, dtype, base quantization — every value the corpus' runs
have). Anything else — a phase the corpus never measured (PPO's critic update), a multi-GPU sharded run, a
DeepSpeed engine — is an extrapolation, marked as one (its basis, and a note in the report): its low end the
lowest measured over the kinds, part by part (``widest``: the smallest bytes part and the smallest relative part —
an extrapolated band claims no bias it has not seen: it reaches below the estimate whenever any kind did), its
high end its own kind's, both parts, or the highest measured, part by part, where the kind has no points at all.
Not the training kind's high end for a rollout: a rollout's total is mostly colocated vLLM's reservation,
utilization × capacity, which a multi-GPU run sizes the same way and whose own floor the rollout kind measured
already (the engine is awake in it); the training kind's bytes part on top (+1.85 GiB on 2026-12-07) would call
every vLLM run at 0.9 of an 80 GB GPU TIGHT by construction. What an extrapolated band cannot know — a miss that was fixed-size on the
corpus' single-GPU LoRA runs may grow with a configuration it never ran (DeepSpeed's buckets, a full fine-tune's
fragmentation) — is said in its note, not guessed.

The verdict (``verdict``): FITS when the band's high end of the peak is within capacity (and the point estimate
too); DOES NOT FIT when the band's low end is over capacity (and the point estimate too); TIGHT otherwise — the
peak lies within memplan's error band of capacity. Failed host-RAM or vLLM checks are DOES NOT FIT whatever the
band. The peak's band is [max over phases of each low end, max of each high end]: the real peak is the largest
real phase total.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from memplan.report import PhaseBand, trusted
from memplan.units import GiB

if TYPE_CHECKING:
    from memplan.estimator.resolve import Run
    from memplan.report import EstimateRequest, PhaseReport, Verdict

BAND_FILE = Path(__file__).resolve().parents[1] / "catalog" / "error_band.json"
KINDS = {"rollout": ("rollout",), "training": ("scoring", "actor_update", "critic_update")}
"""Phase kinds and their phases."""
PHASE_KIND = {phase: kind for kind, phases in KINDS.items() for phase in phases}
DIMS = ("algo", "engine", "gpus", "rollout_engine", "finetune", "placement", "dtype", "quantize_base")
"""What a configuration is, for the band's coverage: ``configuration`` returns one value per name."""


class Band(NamedTuple):
    """One phase's band: the residual's quantiles, each a relative part (a fraction of the estimate) plus a bytes
    part, and where they come from."""

    lower: float
    upper: float
    basis: str
    """'rollout' or 'training' (the corpus points of that kind), or 'extrapolated (<why>): <which ends>'."""
    low_factor: float
    """1 + lower (precomputed: the hot path multiplies by it)."""
    high_factor: float
    lower_bytes: int = 0
    """The low end's bytes part (added to ``total × low_factor``)."""
    upper_bytes: int = 0

    @property
    def extrapolated(self) -> bool:
        return self.basis.startswith("extrapolated")


def configuration(request: EstimateRequest, run: Run) -> tuple[str, ...]:
    """The run's values of ``DIMS``, from the request and its resolved run (plain attribute reads)."""
    return (run.algo, request.engine, "multi" if run.num_gpus > 1 else "single", run.rollout_engine,
            "lora" if run.lora_rank else "full", run.placement, request.dtype, request.quantize_base)


def residual_band(residuals: list[float], low_q: float, high_q: float) -> tuple[float, float]:
    """The ``low_q`` and ``high_q`` quantiles of the residuals, nearest rank (the smallest value with at least
    that share of the values at or below it; ``memplan.validate.percentile``)."""
    ordered = sorted(residuals)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return rank(low_q), rank(high_q)


@lru_cache(maxsize=1)
def load() -> dict:
    """The band file (read once)."""
    return json.loads(BAND_FILE.read_text())


def describe(relative: float, n_bytes: int) -> str:
    """One end of a band as a user reads it: '+1.85 GiB', '-6.1 %' or '-6.1 % +0.37 GiB' (of the estimate)."""
    parts = ([f"{relative:+.1%}"] if relative or not n_bytes else []) + ([f"{n_bytes / GiB:+.2f} GiB"] if n_bytes
                                                                         else [])
    return " ".join(parts)


def _missing(config: tuple[str, ...], measured: list[list[str]]) -> list[str]:
    """What sets ``config`` apart from the nearest configuration the corpus measured (fewest differing
    dimensions; every dimension when it measured none): [] when it measured this one."""
    if not measured:
        return [f"{dim}={value}" for dim, value in zip(DIMS, config)]
    nearest = min(measured, key=lambda m: sum(a != b for a, b in zip(config, m)))
    return [f"{dim}={value}" for dim, value, seen in zip(DIMS, config, nearest) if value != seen]


@lru_cache(maxsize=256)
def bands(config: tuple[str, ...]) -> dict[str, Band]:
    """Each phase's band for a configuration (``configuration``): its kind's where the corpus measured that
    configuration — all its dimensions together — in that kind's phases."""
    data = load()
    measured = data.get("configurations", {})
    widest = data["widest"]
    out = {}
    for phase, kind in PHASE_KIND.items():
        k = data["kinds"].get(kind)
        missing = _missing(config, measured.get(kind) or [m for ms in measured.values() for m in ms])
        if not missing and k is not None and phase in k["phases_measured"]:
            out[phase] = Band(k["lower"], k["upper"], kind, 1 + k["lower"], 1 + k["upper"],
                              k.get("lower_bytes", 0), k.get("upper_bytes", 0))
            continue
        why = (f"no corpus points with {', '.join(missing)}" if missing
               else f"no corpus points for the {phase} phase")
        high, whose = (k, f"the {kind} kind's") if k is not None else (widest, "the highest")
        out[phase] = Band(widest["lower"], high["upper"], f"extrapolated ({why}): the lowest low end measured, "
                          f"{whose} high end", 1 + widest["lower"], 1 + high["upper"], widest.get("lower_bytes", 0),
                          high.get("upper_bytes", 0))
    return out


@lru_cache(maxsize=1)
def label() -> str:
    """How the band is named in reasons and notes: 'corpus residuals p5–p95'."""
    low, high = load()["quantiles"]
    return f"corpus residuals p{round(100 * low)}–p{round(100 * high)}"


class _Judged(NamedTuple):
    """What a configuration's phases share whatever the request's bytes (cached per configuration and phases)."""

    bands: tuple[Band, ...]
    extrapolated: bool
    note: str | None


@lru_cache(maxsize=256)
def _judged(config: tuple[str, ...], phases: tuple[str, ...]) -> _Judged:
    """The bands of ``phases``, and the report's note when one of them is an extrapolation."""
    per_phase = bands(config)
    why: dict[str, list[str]] = {}
    ranges: dict[tuple[str, str], list[str]] = {}
    for phase in phases:
        b = per_phase[phase]
        if b.extrapolated:
            why.setdefault(b.basis.split("(", 1)[1].split(")", 1)[0], []).append(phase)
            ranges.setdefault((describe(b.lower, b.lower_bytes), describe(b.upper, b.upper_bytes)), []).append(phase)
    note = None
    if why:
        what = "; ".join(reason if len(named) == len(phases) else f"{', '.join(named)}: {reason}"
                         for reason, named in why.items())
        used = ", ".join(f"{lo} to {hi} of the estimate for {', '.join(named)}"
                         for (lo, hi), named in ranges.items())
        note = f"error band extrapolated ({what}): {used} (memplan/catalog/error_band.json)"
    return _Judged(tuple(per_phase[phase] for phase in phases), bool(why), note)


_BAND_FIELDS = set(PhaseBand.model_fields)  # every field given: one set shared, as ``trusted`` allows


def judge(request: EstimateRequest, run: Run, reports: list[PhaseReport], peak_bytes: int, other_checks_fail: bool,
          reasons: list[str], notes: list[str]) -> tuple[Verdict, tuple[int, int], tuple[PhaseBand, ...]]:
    """The verdict, the peak's band (low, high bytes) and each phase's band (``PhaseBand``s, in the order of
    ``reports``); appends the TIGHT reason and the extrapolation note. ``other_checks_fail``: host RAM or vLLM.
    Two multiplications and a ``PhaseBand`` per phase: the rest is cached per configuration."""
    judged = _judged(configuration(request, run), tuple([r.phase for r in reports]))
    low = high = 0
    phase_bands = []
    for report, b in zip(reports, judged.bands):
        total = report.total_bytes
        lo, hi = int(total * b.low_factor) + b.lower_bytes, int(total * b.high_factor) + b.upper_bytes
        if lo > low:
            low = lo
        if hi > high:
            high = hi
        phase_bands.append(trusted(PhaseBand, {"phase": report.phase, "low_bytes": lo, "high_bytes": hi,
                                               "lower": b.lower, "upper": b.upper, "lower_bytes": b.lower_bytes,
                                               "upper_bytes": b.upper_bytes, "basis": b.basis}, _BAND_FIELDS))
    capacity = run.capacity_bytes
    over = peak_bytes > capacity
    if other_checks_fail or (over and low > capacity):
        verdict = "does_not_fit"
    elif not over and high <= capacity:
        verdict = "fits"
    else:
        verdict = "tight"
        reasons.append(
            f"tight: the peak {peak_bytes / GiB:.2f} GiB could be {low / GiB:.2f}–{high / GiB:.2f} GiB on a real "
            f"GPU ({label()}{', extrapolated' if judged.extrapolated else ''}), capacity {capacity / GiB:.2f} GiB: "
            "within memplan's error band of capacity")
    if judged.note is not None:
        notes.append(judged.note)
    return verdict, (low, high), tuple(phase_bands)
