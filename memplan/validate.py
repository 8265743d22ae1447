"""``memplan validate``: the estimate against real GPU measurements (the corpus under benchmarks/corpus/).

Each corpus record (``memplan.harness.records.MeasuredPoint``) is one measured quantity of one real run: a phase's
peak in bytes, or only whether the run went through. ``validate(records)`` estimates each record's request and
compares the quantity the run measured with the estimate that means the same thing:

* ``nvml_device_peak`` (device memory used, as NVML reports it: the CUDA context, the caching allocator's reserve,
  a colocated engine's memory outside torch) against the largest total per GPU of the phases the measurement
  window covers, fixed bytes included;
* ``torch_max_allocated`` / ``torch_max_reserved`` (torch's caching allocator only) against the same, net of
  ``Report.fixed_bytes`` (CUDA context, cuBLAS workspace, NCCL buffers), as tests/test_records.py compares;
* ``outcome`` ('ran' / 'oom') against the verdict alone.

Two facts of the measurement, not of the run, are netted out before comparing, each from the record:

* NVML's driver reserve: an NVML v1 ``used`` reading counts the memory the driver reserves, which lies outside
  torch's ``total_memory`` (memplan's capacity) and so in no estimate. Where the record gives NVML's v1 total
  (``MeasuredDevice.nvml_total_bytes``) beside torch's, the reserve — their difference — leaves the measurement.
* The first step: a window that closed before the run's first optimizer step
  (``MeasuredPoint.before_first_optimizer_step``) held no optimizer states (torch's AdamW creates them in its
  first ``step()``), where memplan's phases are the steady state; the compared phase's optimizer states
  (``Breakdown.optstate``) leave the estimate.

A diagnostic beside the error, not a correction: where a record carries the caching allocator's slack
(``MeasuredPoint.allocator_slack_bytes``, torch's max reserved − max allocated over the window),
``allocated_error`` compares the estimate — live tensors — with the measurement less that slack, and the summary
gives its median and p90: how much of a miss is memplan's tensors and how much the allocator's reserve.

Every record with an outcome also checks the verdict: a run that went through must be estimated to fit
(``Report.fits``), one that ran out of memory must not. The signed error is (estimate − measured) / measured: a
negative error is an under-estimate, the dangerous side. Per group of phases (the phases a measurement covers,
e.g. ``scoring+actor_update`` for a training step measured as one window) the summary gives the median and the
90th percentile (nearest rank) of |error|, the worst under- and over-estimate, how many under-estimates go
beyond 10 %, and how many measurements lie within memplan's own error band for the compared phase
(``Report.phase_bands``; ``memplan.estimator.band``). A record whose request memplan cannot estimate yet (a model
type it refuses) is listed as "not expressible yet", with the reason, and counts in no statistic.

No torch, no network: the tests run it on every push (tests/test_corpus.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from memplan.errors import InputError, MemplanError
from memplan.estimator import estimate
from memplan.harness.records import CudaRecord, MeasuredPoint, records_from_cuda
from memplan.report import PhaseReport, Report
from memplan.units import GiB

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT / "benchmarks" / "corpus"
CUDA_RECORDS = ROOT / "benchmarks" / "results" / "cuda"
UNDER_LIMIT = 0.10  # issue 16's target: no under-estimate beyond 10 %


@dataclass(frozen=True, kw_only=True, slots=True)
class PointResult:
    """One record compared: what was measured, what memplan estimates for it, and whether the verdict holds."""

    id: str
    point: str
    group: str  # the phases the measurement covers, joined by '+'
    source: str  # the source file's name (one model on one device, for AgileRL's fixtures)
    quantity: str
    device: str
    measured_bytes: int | None  # as the source recorded it
    estimated_bytes: int | None  # on the measured quantity's basis (net of fixed bytes for torch's counters)
    compared_bytes: int | None  # the measurement on the estimate's basis (net of NVML's driver reserve)
    error: float | None  # (estimated − compared) / compared
    estimate_phase: str | None  # the estimate's phase whose total is compared (the largest of the group)
    outcome: str | None
    predicted_fits: bool | None
    verdict_right: bool | None
    status: str  # 'compared', 'outcome only' or 'not expressible yet: <why>'
    in_band: bool | None = None  # the measurement lies within the compared phase's error band (memplan's own)
    allocated_error: float | None = None  # against the measurement less the allocator's slack, where recorded


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupSummary:
    """The errors of one group of phases over every record compared in it."""

    group: str
    n: int
    median_abs_error: float
    p90_abs_error: float
    worst_under: tuple[str, float] | None  # (record id, signed error) of the most negative error
    worst_over: tuple[str, float] | None
    under_beyond_limit: int  # records under-estimated by more than UNDER_LIMIT
    in_band: int = 0  # records whose measurement lies within the compared phase's error band
    allocated: tuple[int, float, float] | None = None  # (n, median, p90) of |allocated_error| where recorded


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """Everything ``memplan validate`` prints: each record, each group, and the verdicts."""

    corpus: tuple[str, ...]
    results: tuple[PointResult, ...]
    groups: tuple[GroupSummary, ...]
    by_source: tuple[GroupSummary, ...]  # the same per group and source file ('rollout · <file>')
    verdicts_right: int  # runs (not records) whose fit/OOM verdict is right
    verdicts_total: int
    not_expressible: int  # records memplan cannot estimate yet

    def group(self, name: str) -> GroupSummary:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)

    def as_dict(self) -> dict:
        return asdict(self)


def corpus_name(path: Path | str | None = None) -> str:
    """How a corpus path is shown: relative to the repository when it lies inside it."""
    p = Path(path).resolve() if path is not None else DEFAULT_CORPUS
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def load_corpus(path: Path | str | None = None) -> list[MeasuredPoint]:
    """Every record under ``path`` (a directory of ``*.jsonl`` files, or one file), and — for the default corpus —
    the ``memplan measure`` CudaRecords under benchmarks/results/cuda/, converted (``records_from_cuda``)."""
    root = Path(path) if path is not None else DEFAULT_CORPUS
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    records = [_parsed(MeasuredPoint, line, f"{f.name}:{n}") for f in files
               for n, line in enumerate(f.read_text().splitlines(), 1) if line.strip()]
    if path is None and CUDA_RECORDS.is_dir():
        for f in sorted(CUDA_RECORDS.glob("*.json")):
            record = _parsed(CudaRecord, f.read_text(), f.name)
            records += records_from_cuda(record, f"benchmarks/results/cuda/{f.name}")
    return records


def _parsed(model: type[MeasuredPoint] | type[CudaRecord], text: str, where: str) -> MeasuredPoint | CudaRecord:
    """One record, or an InputError naming the file, the line and the record's field that is wrong."""
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(the record)"
        raise InputError("corpus", f"{where}: {field}: {first['msg']} (a {model.__name__}, "
                         "memplan/harness/records.py)", field) from None


def compare(record: MeasuredPoint, report: Report) -> tuple[int, str]:
    """The estimate that means what ``record`` measured: (bytes, the phase they come from)."""
    phases = [p for p in report.phases if p.phase in record.phases]
    if not phases:  # the algorithm has none of the covered phases: the run's peak
        top = next(p for p in report.phases if p.phase == report.peak_phase)
    else:
        top = max(phases, key=lambda p: p.total_bytes)
    return top.total_bytes - _netted(record, report, top), top.phase


def _netted(record: MeasuredPoint, report: Report, phase: PhaseReport) -> int:
    """What the estimate of ``phase`` holds that the measurement cannot: the fixed bytes for torch's counters, the
    optimizer states before the first optimizer step."""
    out = report.fixed_bytes if record.quantity.startswith("torch_") else 0
    if record.before_first_optimizer_step:
        out += phase.breakdown.optstate
    return out


def driver_reserve(record: MeasuredPoint) -> int:
    """NVML's driver reserve inside an NVML v1 reading: NVML's total − torch's total (0 where the record lacks
    either, or the quantity is not NVML's)."""
    d = record.device
    if record.quantity != "nvml_device_peak" or d.nvml_total_bytes is None or d.total_bytes is None:
        return 0
    return d.nvml_total_bytes - d.total_bytes


def _in_band(report: Report, phase: str, estimated: int, measured: int) -> bool | None:
    """Whether the measurement (on the estimate's basis) lies within the error band the report gives the compared
    phase, taken around the compared estimate (as benchmarks/corpus/error_band.py fits it); None where the report
    has no band for it."""
    for b in report.phase_bands:
        if b.phase == phase:
            low = int(estimated * (1 + b.lower)) + b.lower_bytes
            return low <= measured <= int(estimated * (1 + b.upper)) + b.upper_bytes
    return None


def validate(records: Iterable[MeasuredPoint], corpus: tuple[str, ...] = ()) -> Summary:
    """Estimate every record's request and compare; see the module docstring for what compares to what."""
    cache: dict[str, Report | str] = {}
    results = []
    for rec in records:
        if rec.unexpressible is not None or rec.request is None:
            results.append(_unexpressible(rec, rec.unexpressible or "no request"))
            continue
        key = rec.request.model_dump_json()
        if key not in cache:
            try:
                cache[key] = estimate(rec.request)
            except MemplanError as e:
                cache[key] = str(e)
        rep = cache[key]
        if isinstance(rep, str):
            results.append(_unexpressible(rec, rep))
            continue
        verdict = None if rec.outcome is None else (rep.fits == (rec.outcome == "ran"))
        est = err = phase = in_band = measured = allocated = None
        if rec.measured_bytes is not None and rec.quantity != "outcome":
            est, phase = compare(rec, rep)
            measured = rec.measured_bytes - driver_reserve(rec)
            err = (est - measured) / measured
            in_band = _in_band(rep, phase, est, measured)
            if rec.allocator_slack_bytes is not None:
                live = measured - rec.allocator_slack_bytes
                allocated = (est - live) / live
        elif rec.quantity == "outcome":  # the verdict's own basis: the run's peak per GPU
            est, phase = rep.peak_bytes_per_gpu, rep.peak_phase
        results.append(PointResult(
            id=rec.id, point=rec.point, group="+".join(rec.phases), source=_source(rec), quantity=rec.quantity,
            device=rec.device.name, measured_bytes=rec.measured_bytes, estimated_bytes=est, compared_bytes=measured,
            error=err,
            estimate_phase=phase,
            outcome=rec.outcome, predicted_fits=rep.fits, verdict_right=verdict,
            status="compared" if err is not None else "outcome only", in_band=in_band, allocated_error=allocated))
    groups = [_summarise(name, [(r.id, r.error) for r in results if r.group == name and r.error is not None],
                         sum(bool(r.in_band) for r in results if r.group == name),
                         [r.allocated_error for r in results if r.group == name and r.allocated_error is not None])
              for name in dict.fromkeys(r.group for r in results if r.error is not None)]
    keys = dict.fromkeys((r.group, r.source) for r in results if r.error is not None)
    by_source = [_summarise(f"{g} · {src}", [(r.id, r.error) for r in results
                                             if (r.group, r.source) == (g, src) and r.error is not None])
                 for g, src in sorted(keys)]
    runs: dict[str, bool] = {}
    for r in results:
        if r.verdict_right is not None:
            runs[r.point] = runs.get(r.point, True) and r.verdict_right
    return Summary(
        corpus=corpus, results=tuple(results), groups=tuple(groups), by_source=tuple(by_source),
        verdicts_right=sum(runs.values()), verdicts_total=len(runs),
        not_expressible=sum(r.status.startswith("not expressible") for r in results))


def _source(rec: MeasuredPoint) -> str:
    """The source file's name (one model on one device, for AgileRL's fixtures); a page that many repositories
    share the name of (a README) is prefixed by its repository."""
    name = (rec.source.path or rec.source.url).rsplit("/", 1)[-1]
    if name.lower().startswith("readme") and "github.com/" in rec.source.url:
        name = "/".join(rec.source.url.split("github.com/", 1)[1].split("/")[:2]) + " " + name
    return name


def _unexpressible(rec: MeasuredPoint, why: str) -> PointResult:
    return PointResult(
        id=rec.id, point=rec.point, group="+".join(rec.phases), source=_source(rec), quantity=rec.quantity,
        device=rec.device.name, measured_bytes=rec.measured_bytes, estimated_bytes=None, compared_bytes=None,
        error=None,
        estimate_phase=None,
        outcome=rec.outcome, predicted_fits=None, verdict_right=None, status=f"not expressible yet: {why}")


def _summarise(group: str, errs: list[tuple[str, float]], in_band: int = 0,
               allocated_errors: list[float] | None = None) -> GroupSummary:
    absolute = sorted(abs(e) for _, e in errs)
    live = sorted(abs(e) for e in allocated_errors or ())
    under = min(errs, key=lambda x: x[1])
    over = max(errs, key=lambda x: x[1])
    return GroupSummary(
        group=group, n=len(errs), median_abs_error=statistics.median(absolute),
        p90_abs_error=percentile(absolute, 0.9),
        worst_under=under if under[1] < 0 else None, worst_over=over if over[1] > 0 else None,
        under_beyond_limit=sum(e < -UNDER_LIMIT for _, e in errs), in_band=in_band,
        allocated=(len(live), statistics.median(live), percentile(live, 0.9)) if live else None)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (the smallest value with at least q of the values at or
    below it)."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def format_table(summary: Summary, *, points: bool = True) -> str:
    """The plain-text report ``memplan validate`` prints (no rich: the core imports none)."""
    lines = []
    if points:
        lines.append(f"{'record':<92} {'measured':>9} {'estimate':>9} {'error':>8}  verdict")
        for r in summary.results:
            if r.error is None:
                tail = r.status
                if r.status == "outcome only":
                    tail = f"{r.outcome}: {'right' if r.verdict_right else 'WRONG'} (estimate " \
                           f"{'fits' if r.predicted_fits else 'does not fit'})"
                lines.append(f"{r.id:<92} {_gib(r.measured_bytes):>9} {_gib(r.estimated_bytes):>9} {'-':>8}  {tail}")
                continue
            verdict = "" if r.verdict_right is None else ("right" if r.verdict_right else
                                                          f"WRONG ({r.outcome}, estimate says "
                                                          f"{'fits' if r.predicted_fits else 'does not fit'})")
            lines.append(f"{r.id:<92} {_gib(r.compared_bytes):>9} {_gib(r.estimated_bytes):>9} "
                         f"{r.error:>+8.1%}  {verdict}")
        lines.append("")
    lines.append("GiB = 2^30 bytes; error = (estimate - measured) / measured; p90 = nearest rank; measured net of "
                 "NVML's driver reserve, estimate net of optimizer states before the first optimizer step, where "
                 "the record says so")
    lines.append(f"{'phases':<22} {'n':>4} {'median |err|':>12} {'p90 |err|':>10} {'under >10%':>10} "
                 f"{'in band':>8}  worst under / worst over")
    for g in summary.groups:
        wu = f"{g.worst_under[1]:+.1%} ({g.worst_under[0]})" if g.worst_under else "none"
        wo = f"{g.worst_over[1]:+.1%} ({g.worst_over[0]})" if g.worst_over else "none"
        lines.append(f"{g.group:<22} {g.n:>4} {g.median_abs_error:>12.1%} {g.p90_abs_error:>10.1%} "
                     f"{g.under_beyond_limit:>10} {g.in_band:>8}  {wu}")
        lines.append(f"{'':<72}{wo}")
        if g.allocated:
            n, med, p90 = g.allocated
            lines.append(f"{'  less the allocator':<22} {n:>4} {med:>12.1%} {p90:>10.1%}  (measured less torch's "
                         "max reserved − max allocated: memplan's tensors alone)")
    lines.append("in band: records whose measurement lies within memplan's error band for the compared phase "
                 "(memplan/catalog/error_band.json; 90 % of the corpus by construction, p5-p95)")
    lines.append("")
    lines.append("per source (signed errors: median, worst under, worst over)")
    for g in summary.by_source:
        signed = sorted(e for r in summary.results if r.error is not None and f"{r.group} · {r.source}" == g.group
                        for e in [r.error])
        lines.append(f"  {g.group:<100} n {g.n:>3}  median {statistics.median(signed):+7.1%}  "
                     f"min {signed[0]:+7.1%}  max {signed[-1]:+7.1%}")
    lines.append("")
    lines.append(f"verdicts right: {summary.verdicts_right} of {summary.verdicts_total} runs "
                 "(a run that went through must be estimated to fit; an OOM must not)")
    reasons: dict[str, int] = {}
    for r in summary.results:
        if r.status.startswith("not expressible"):
            reasons[r.status] = reasons.get(r.status, 0) + 1
    lines.append(f"not expressible yet: {summary.not_expressible} records")
    for why, n in sorted(reasons.items(), key=lambda x: -x[1]):
        lines.append(f"  {n:>4}  {why[len('not expressible yet: '):][:160]}")
    return "\n".join(lines)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"
