"""memplan's error band: how far its phase totals have been from real GPUs, stated beside every estimate.

The band is data (``memplan/catalog/error_band.json``), written by ``python benchmarks/corpus/error_band.py`` from
``memplan validate``'s residuals over the measurement corpus (benchmarks/corpus/): for each phase kind, the 5th
and 95th percentiles (nearest rank) of r = (measured − estimated) / estimated. A phase whose estimate is T may
then be T·(1 + lower) to T·(1 + upper) on a real GPU — the range in which 90 % of the corpus' measurements fell
around their estimates. The estimate itself is never changed: the band is a statement beside it.

Phase kinds: ``rollout``, and ``training`` (scoring, actor_update, critic_update: a training window of the corpus
covers the scoring forwards and the update). A phase takes its kind's band only when the corpus holds points
for that phase *and* for the run's configuration (``configuration``: algorithm, engine, one GPU or several,
rollout engine, LoRA or full fine-tuning, placement, dtype, base quantization — every value the corpus' runs
have). Anything else — a phase the corpus never measured (PPO's critic update), a multi-GPU sharded run, a
DeepSpeed engine — is an extrapolation, marked as one: its low end is the lowest measured over the kinds (an
extrapolated band claims no bias it has not seen: it reaches below the estimate whenever any kind did), its high
end its own kind's, or the highest measured where the kind has no points at all. Not the training kind's high end
for a rollout: a rollout's total is mostly colocated vLLM's reservation, utilization × capacity, which a
multi-GPU run sizes the same way; the training kind's +64 % on it would call every vLLM run above 60 % utilization
TIGHT by construction.

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
    """One phase's band: residual quantiles (fractions of the estimate) and where they come from."""

    lower: float
    upper: float
    basis: str
    """'rollout' or 'training' (the corpus points of that kind), or 'extrapolated (<why>): <which ends>'."""
    low_factor: float
    """1 + lower (precomputed: the hot path multiplies by it)."""
    high_factor: float

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


@lru_cache(maxsize=256)
def bands(config: tuple[str, ...]) -> dict[str, Band]:
    """Each phase's band for a configuration (``configuration``): its kind's where the corpus covers both."""
    data = load()
    covered = data["covered"]
    missing = [f"{dim}={value}" for dim, value in zip(DIMS, config) if value not in covered.get(dim, ())]
    widest = data["widest"]
    out = {}
    for phase, kind in PHASE_KIND.items():
        k = data["kinds"].get(kind)
        if not missing and k is not None and phase in k["phases_measured"]:
            out[phase] = Band(k["lower"], k["upper"], kind, 1 + k["lower"], 1 + k["upper"])
            continue
        why = (f"no corpus points with {', '.join(missing)}" if missing
               else f"no corpus points for the {phase} phase")
        upper, whose = (k["upper"], f"the {kind} kind's") if k is not None else (widest["upper"], "the highest")
        out[phase] = Band(widest["lower"], upper, f"extrapolated ({why}): the lowest low end measured, {whose} "
                          "high end", 1 + widest["lower"], 1 + upper)
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
    ranges: dict[tuple[float, float], list[str]] = {}
    for phase in phases:
        b = per_phase[phase]
        if b.extrapolated:
            why.setdefault(b.basis.split("(", 1)[1].split(")", 1)[0], []).append(phase)
            ranges.setdefault((b.lower, b.upper), []).append(phase)
    note = None
    if why:
        what = "; ".join(reason if len(named) == len(phases) else f"{', '.join(named)}: {reason}"
                         for reason, named in why.items())
        used = ", ".join(f"{lo:+.1%} to {hi:+.1%} of the estimate for {', '.join(named)}"
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
        lo, hi = int(total * b.low_factor), int(total * b.high_factor)
        if lo > low:
            low = lo
        if hi > high:
            high = hi
        phase_bands.append(trusted(PhaseBand, {"phase": report.phase, "low_bytes": lo, "high_bytes": hi,
                                               "lower": b.lower, "upper": b.upper, "basis": b.basis}, _BAND_FIELDS))
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
