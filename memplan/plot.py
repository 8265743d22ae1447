"""Pictures of a report: the per-phase stacked bars against the GPU's capacity line (``memplan estimate``,
``compare``: one panel per algorithm), and, for a batch search (``memplan plan --max-batch``), the peak
against the batch size with the capacity line and the limit marked.

matplotlib is the ``[plot]`` extra and is imported only here, inside the functions (``import memplan`` never
loads it); without it the functions raise ``EnvironmentProblem`` with the install hint, which the CLI turns
into one ``error:`` line and exit code 2. Figures are drawn on matplotlib's object API (``Figure``, no
pyplot, no global backend) and written as SVG or PNG, chosen by the file's suffix; an SVG carries no date and
a fixed hash salt, so the same report gives the same file.

The bars stack the phase's bytes by PyTorch's memory categories (``Breakdown``: parameter, buffer, gradient,
optstate, activation, temp, kv_cache, logits, other), in the colours the planner page uses; GiB = 1024³.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memplan.errors import EnvironmentProblem, InputError
from memplan.units import GiB

if TYPE_CHECKING:
    from memplan.planner import LimitReport
    from memplan.report import Report

FORMATS = ("svg", "png")
CATEGORIES = ("parameter", "buffer", "gradient", "optstate", "activation", "temp", "kv_cache", "logits", "other")
# Okabe–Ito (readable with the common colour-vision deficiencies) and grey, as on the planner page
COLOURS = ("#0072B2", "#56B4E9", "#CC79A7", "#E69F00", "#009E73", "#F0E442", "#D55E00", "#882255", "#8C8C8C")
CAPACITY = "#a4161a"
CURVE_POINTS = 48  # batch sizes a batch-search curve is drawn through (all of them up to this many)


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EnvironmentProblem(
            "--plot needs matplotlib, which is not installed: pip install 'memplan[plot]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def _format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InputError("plot", f"the file's suffix picks the format: .svg or .png, got {path.name!r}", str(path))
    return suffix


def _save(fig: Any, path: Path, fmt: str) -> Path:
    import matplotlib

    metadata = {"Date": None} if fmt == "svg" else None
    try:
        with matplotlib.rc_context({"svg.hashsalt": "memplan", "svg.fonttype": "none"}):
            fig.savefig(path, format=fmt, metadata=metadata, dpi=144 if fmt == "png" else None)
    except OSError as err:  # a missing folder, no permission: one line naming the option, not a traceback
        raise InputError("plot", f"cannot write {str(path)!r}: {err.strerror or err}", str(path)) from None
    return path


def _title(report: Report) -> str:
    req = report.request
    model = req.model if isinstance(req.model, str) else f"inline {req.model.model_type}"
    verdict = "FITS" if report.fits else "DOES NOT FIT"
    verdict = str(getattr(report, "verdict", verdict) or verdict).upper().replace("_", " ")
    return (f"{req.algo.upper()} · {model} · {report.num_gpus}×{report.gpu}: {verdict}, "
            f"peak {report.peak_bytes_per_gpu / GiB:.2f} GiB ({report.peak_phase.replace('_', ' ')})")


def _phase_panel(ax: Any, report: Report, legend: bool) -> float:
    """One report's phases as horizontal bars stacked by category, the capacity as a dashed line; returns the
    GiB the axis needs to show every bar, band and label."""
    phases = report.phases
    labels = [p.phase.replace("_", " ") + (f" [{p.group}]" if p.group else "") for p in phases]
    rows = range(len(phases))[::-1]  # the first phase on top
    left = [0.0] * len(phases)
    for category, colour in zip(CATEGORIES, COLOURS, strict=True):
        widths = [getattr(p.breakdown, category) / GiB for p in phases]
        if not any(widths):
            continue
        ax.barh(list(rows), widths, left=left, color=colour, edgecolor="white", linewidth=0.6, height=0.62,
                label=category)
        left = [a + w for a, w in zip(left, widths, strict=True)]
    capacity = report.capacity_bytes / GiB
    ax.axvline(capacity, color=CAPACITY, linestyle="--", linewidth=1.8, label=f"capacity {capacity:.2f} GiB")
    bands = {b.phase: b for b in getattr(report, "phase_bands", ())}  # memplan's error band, where the report has it
    ends = []
    for i, (row, phase) in enumerate(zip(rows, phases, strict=True)):
        band = bands.get(phase.phase) if not phase.group else None
        total = phase.total_bytes / GiB
        end = total
        if band is not None:
            ax.errorbar(total, row, xerr=[[total - band.low_bytes / GiB], [band.high_bytes / GiB - total]], fmt="none",
                        ecolor="#1b1f24", elinewidth=1.1, capsize=4, label="error band" if not ends else None)
            end = max(total, band.high_bytes / GiB)
        ends.append(end)
        peak = phase.phase == report.peak_phase
        ax.text(end, row, f"  {phase.total_bytes / GiB:.2f} GiB" + (" ◀ peak" if peak else ""),
                va="center", fontsize=9, color=CAPACITY if phase.total_bytes > report.capacity_bytes else "#1b1f24",
                fontweight="bold" if peak else "normal", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_yticks(list(rows), labels)
    ax.set_title(_title(report), fontsize=10, loc="left")
    ax.grid(axis="x", color="#e3e6eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return max(report.capacity_bytes / GiB, *ends) * 1.25


def phase_bars(reports: Report | Sequence[Report], path: str | Path) -> Path:
    """Write the per-phase stacked bars of one report (``estimate``) or several (``compare``: one panel each,
    on one GiB axis) to ``path`` (.svg or .png). Returns the path."""
    path = Path(path)
    fmt = _format(path)
    reports = [reports] if not isinstance(reports, Sequence) else list(reports)
    fig = _figure(10, 0.6 + sum(0.9 + 0.42 * len(r.phases) for r in reports))
    axes = fig.subplots(len(reports), 1, squeeze=False, sharex=True)[:, 0]
    right = max(_phase_panel(ax, report, legend=i == 0)
                for i, (ax, report) in enumerate(zip(axes, reports, strict=True)))
    axes[0].set_xlim(0, right)  # one GiB axis for every panel (sharex)
    axes[-1].set_xlabel("GiB per GPU")
    return _save(fig, path, fmt)


def _batch_sizes(limit: int | None) -> list[int]:
    """Every batch size up to one past the limit when that is few; else a geometric spread that keeps the
    limit and the one past it."""
    last = max(2, (limit or 0) + 1, 2 * (limit or 1))
    if last <= CURVE_POINTS:
        return list(range(1, last + 1))
    ratio = last ** (1 / (CURVE_POINTS - 1))
    sizes = {round(ratio**i) for i in range(CURVE_POINTS)} | {1, last}
    if limit:
        sizes |= {limit, limit + 1}
    return sorted(sizes)


def batch_curve(result: LimitReport, path: str | Path) -> Path:
    """Write the peak per GPU against the searched batch size (``memplan plan --max-batch`` and its kin),
    with the capacity line and the limit marked, to ``path`` (.svg or .png). Returns the path."""
    from memplan.estimator import estimate

    path = Path(path)
    fmt = _format(path)
    if result.search == "min_gpus":
        raise InputError("plot", "draws the batch searches (--max-batch, --max-rollout-batch, --max-score-batch); "
                         "for --min-gpus, plot an estimate at the GPU count it finds", True)
    field = result.search.removeprefix("max_")
    limit: int | None = getattr(result, result.search)
    sizes, peaks, verdicts, lows, highs = [], [], [], [], []
    for n in _batch_sizes(limit):
        try:
            report = estimate(result.request.model_copy(update={field: n}))
        except InputError:  # past what the run allows (a scoring batch beyond the sequences a GPU scores)
            continue
        sizes.append(n)
        peaks.append(report.peak_bytes_per_gpu / GiB)
        verdicts.append(getattr(report, "verdict", "fits" if report.fits else "does_not_fit"))
        low, high = getattr(report, "peak_band_bytes", (report.peak_bytes_per_gpu,) * 2)
        lows.append(low / GiB)
        highs.append(high / GiB)
        capacity = report.capacity_bytes / GiB
    if not sizes:
        raise InputError(field, "no batch size of this run can be estimated", None)
    fig = _figure(9, 4.2)
    ax = fig.subplots()
    if lows != peaks or highs != peaks:
        ax.fill_between(sizes, lows, highs, color="#56B4E9", alpha=0.25, linewidth=0, label="error band")
    ax.plot(sizes, peaks, color="#0072B2", linewidth=1.8, label="peak per GPU")
    for verdict, colour in (("fits", "#0072B2"), ("tight", "#E69F00"), ("does_not_fit", CAPACITY)):
        at = [i for i, v in enumerate(verdicts) if v == verdict]
        if at:
            ax.scatter([sizes[i] for i in at], [peaks[i] for i in at], color=colour, s=16, zorder=3,
                       label=verdict.upper().replace("_", " "))
    ax.axhline(capacity, color=CAPACITY, linestyle="--", linewidth=1.8, label=f"capacity {capacity:.2f} GiB")
    if limit:
        at = peaks[sizes.index(limit)]
        ax.axvline(limit, color="#4a5260", linestyle=":", linewidth=1.2)
        ax.annotate(f"largest that fits: {limit}", (limit, at), textcoords="offset points", xytext=(6, -14),
                    fontsize=9)
    if sizes[-1] / sizes[0] > 64:
        ax.set_xscale("log", base=2)
    req = result.request
    model = req.model if isinstance(req.model, str) else f"inline {req.model.model_type}"
    ax.set_title(f"{req.algo.upper()} · {model} · {req.gpus}: peak against {field.replace('_', ' ')}",
                 fontsize=10, loc="left")
    ax.set_xlabel(field.replace("_", " ") + " (per GPU)")
    ax.set_ylabel("GiB per GPU")
    ax.set_ylim(0, max(*highs, capacity) * 1.1)
    ax.grid(color="#e3e6eb", linewidth=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path, fmt)
