"""Terminal output of the CLI: the only module that imports rich.

Each command computes one result with one library call and hands it here: ``estimate`` (phases ×
categories, roles, verdict, deciding terms, notes), ``compare``, ``plan`` and its limits, the catalogs,
and traces. Numbers are bytes until this module formats them in GiB (``memplan.units``). ``json_out``
prints any pydantic model or plain data as JSON — plain ``print``, so pipes get exactly the JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from memplan.comparison import CompareReport
from memplan.planner import LimitReport, PlanCandidate, PlanReport
from memplan.report import Breakdown, Report
from memplan.units import GiB

CATEGORIES = [f for f in Breakdown.model_fields]  # parameter … other, in torch's order
UNBOUNDED = 10_000  # columns when stdout is not a terminal: wider than any table memplan prints


def _console() -> Console:
    """A console on the current stdout (made per call: CliRunner swaps sys.stdout). A file, pipe or CI log has
    no width to fit: rich would assume 80 columns and cut cells ('headro…') or wrap them, so tables take the
    width they need and lines are never wrapped."""
    out = Console(highlight=False, markup=False)  # no markup: names, paths and notes print as they are ('[s, V]')
    try:
        tty = out.file.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        tty = False
    if not tty:  # also under FORCE_COLOR (CI logs), which rich treats as a terminal 80 columns wide
        out = Console(highlight=False, markup=False, width=UNBOUNDED, soft_wrap=True)
    return out


def gib(n_bytes: int | float) -> str:
    return f"{n_bytes / GiB:.2f}"


def as_data(obj: Any) -> Any:
    """Pydantic models, dataclasses, lists of them → JSON-ready data."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_data(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): as_data(v) for k, v in obj.items()}
    return obj


def json_out(obj: Any) -> None:
    if isinstance(obj, BaseModel):
        print(obj.model_dump_json(indent=2))
    else:
        print(json.dumps(as_data(obj), indent=2))


def _failed(reasons: Any) -> str:
    """The failed checks of a verdict, by the first words of each reason: 'GPU memory', 'host RAM', 'vLLM'."""
    return ", ".join(reason.split(":", 1)[0] for reason in reasons)


VERDICTS = {"fits": ("FITS", "green"), "tight": ("TIGHT", "yellow"), "does_not_fit": ("DOES NOT FIT", "red")}
"""How each verdict (``Report.verdict``) is written and coloured."""


def verdict_word(verdict: str) -> str:
    return VERDICTS[verdict][0]


def _verdict(report: Report) -> Text:
    word, colour = VERDICTS[report.verdict]
    text = Text(word, style=f"bold {colour}")
    peak = next((p for p in report.phases if p.phase == report.peak_phase), None)
    activity = f" ({peak.activity})" if peak is not None and peak.activity else ""
    low, high = report.peak_band_bytes
    text.append(
        f"  peak {gib(report.peak_bytes_per_gpu)} GiB per GPU in {report.peak_phase}{activity}"
        f" (on a real GPU {gib(low)}–{gib(high)}: memplan's error band)"
        f" · capacity {gib(report.capacity_bytes)} GiB · headroom {gib(report.headroom_bytes)} GiB"
    )
    return text


def _title(report: Report) -> str:
    req = report.request
    model = req.model if isinstance(req.model, str) else f"inline {req.model.model_type}"
    return f"{model} · {req.algo} · {report.num_gpus}× {report.gpu}"


def estimate(report: Report) -> None:
    """The estimate as tables: phases × categories, resident models, verdict, deciding terms, notes."""
    out = _console()
    phases = Table(title=f"Per-GPU memory (GiB): {_title(report)}", title_justify="left")
    phases.add_column("category")
    for ph in report.phases:
        mark = " (peak)" if ph.phase == report.peak_phase else ""
        phases.add_column(ph.phase + mark, justify="right")
    for cat in CATEGORIES:
        values = [getattr(ph.breakdown, cat) for ph in report.phases]
        if any(values):
            phases.add_row(cat, *(gib(v) for v in values))
    listed = [ph.breakdown.total for ph in report.phases]
    if any(ph.total_bytes != t for ph, t in zip(report.phases, listed)):
        phases.add_row("fixed (context, reserve)", *(gib(ph.total_bytes - t) for ph, t in zip(report.phases, listed)))
    phases.add_row("total", *(gib(ph.total_bytes) for ph in report.phases), style="bold")
    out.print(phases)
    groups: dict[str, list[str]] = {}  # split placement: the GPU group that sets each phase
    for ph in report.phases:
        if ph.group:
            groups.setdefault(ph.group, []).append(ph.phase)
    if groups:
        out.print("Split placement, each phase on its busiest GPU group: " + "; ".join(
            f"{', '.join(phases_)} on the {group} GPUs" for group, phases_ in groups.items()), highlight=False)
    lengths = [f"{ph.phase}: {ph.tokens}" for ph in report.phases if ph.tokens]
    if lengths:
        out.print("Tokens assumed — " + "; ".join(lengths), highlight=False)

    roles = Table(title="Resident models (per GPU, between phases)", title_justify="left")
    for col, just in [("role", "left"), ("model", "left"), ("params", "right"), ("trained", "left"),
                      ("ZeRO", "right"), ("GPUs", "right"), ("resident GiB", "right"), ("host GiB", "right")]:
        roles.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in report.models:
        name = m.name + (f" (shares {m.shares_weights_with})" if m.shares_weights_with else "")
        trained = "yes" if m.trainable else "no"
        if m.trainable and m.trainable_params != m.num_params:
            trained = f"{m.trainable_params / 1e6:.1f}M"
        roles.add_row(m.role, name, f"{m.num_params / 1e9:.2f}B", trained, str(m.zero_stage), str(m.gpus),
                      gib(m.resident.total), gib(m.host_bytes))
    out.print(roles)

    out.print(_verdict(report))
    host = "fits" if report.host_fits else "EXCEEDS the node's RAM"
    out.print(f"host RAM per node: {gib(report.host_bytes_per_node)} GiB ({host}); "
              f"fixed per GPU: {gib(report.fixed_bytes)} GiB")
    if report.deciding_terms:
        terms = Table(title=f"Deciding terms ({report.peak_phase})", title_justify="left")
        for col in ("role", "category", "GiB", "why"):
            terms.add_column(col, justify="right" if col == "GiB" else "left")
        for item in report.deciding_terms:
            terms.add_row(item.role, item.category, gib(item.bytes), item.note)
        out.print(terms)
    for reason in report.reasons:
        tight = reason.startswith("tight:")  # a TIGHT verdict's reason: a warning, not a failed check
        out.print(f"{'!' if tight else '✗'} {reason}", style="yellow" if tight else "red")
    for note in report.notes:
        out.print(f"• {note}")


def step_time(result: Any) -> None:
    """Time rows under the estimate (``memplan.step_time`` of the same request): seconds and share per phase,
    the step, tokens per second per GPU. ``memplan time`` gives each phase's blocks."""
    out = _console()
    table = Table(title=f"Time per step (estimated, {result.num_gpus}× {result.gpu})", title_justify="left")
    for col, just in [("phase", "left"), ("seconds", "right"), ("share", "right"), ("bound by", "left")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for ph in result.phases:
        longest = max(ph.items, key=lambda i: i.seconds)
        table.add_row(ph.phase, seconds(ph.seconds), f"{ph.share:.0%}", f"{longest.bound} ({longest.role})")
    table.add_row("step", seconds(result.seconds_per_step), "100%", "", style="bold")
    out.print(table)
    out.print(f"{result.prompts_per_step} prompts per step · {result.tokens_per_second_per_gpu:.0f} tokens/s per GPU "
              f"· `memplan time` for each phase's terms and a data set's wall time", highlight=False)


def next_steps(found: PlanReport | None, command: str) -> None:
    """What to try when a run does not fit: the planner's best changes that fit (``found``, from
    ``memplan.planner.plan``, fastest first) and the ``memplan plan`` line that lists them all."""
    out = _console()
    if found is not None and found.fits_any:
        out.print(Text("What to try next", style="bold").append(
            " — the fastest changes that fit (estimated), from memplan plan (given→new):", style="not bold"))
        for i, c in enumerate(found.candidates, 1):
            out.print(f"  {i}. {changes(c.changes) or '(as given)'}: peak {gib(c.peak_bytes_per_gpu)} GiB per GPU, "
                      f"headroom {gib(c.headroom_bytes)} GiB")
        out.print(f"Every option, its cost and why: {command}", soft_wrap=True)
        return
    if found is not None:  # nothing the planner may change fits: `command` asks for the fewest GPUs
        closest = found.candidates[0]
        short = "; ".join(getattr(closest, "reasons", ()) or ()) or (
            f"{gib(-closest.headroom_bytes)} GiB per GPU over" if closest.headroom_bytes < 0
            else f"host RAM {gib(closest.host_bytes_per_node)} GiB per node, over --host-ram-gib")
        out.print(Text("What to try next", style="bold").append(
            f": no setting the planner may change fits on these GPUs (closest: {changes(closest.changes) or 'as given'}"
            f"; {short}). More GPUs, or a larger GPU (memplan gpus):", style="not bold"))
        out.print(f"  {command}", soft_wrap=True)
        return
    out.print(Text("What to try next", style="bold").append(": what to change so it fits, fastest first:",
                                                            style="not bold"))
    out.print(f"  {command}", soft_wrap=True)


def compare_next_steps(found: dict[str, PlanReport | None], commands: dict[str, str]) -> None:
    """For each algorithm that does not fit: the planner's best change that fits (fastest), and its ``memplan plan``
    line."""
    out = _console()
    out.print(Text("What to try next", style="bold").append(
        " — for each algorithm that is TIGHT or does not fit, the fastest change that FITS (memplan plan):",
        style="not bold"))
    for algo, plan_report in found.items():
        if plan_report is not None and plan_report.fits_any:
            best = plan_report.candidates[0]
            what = f"{changes(best.changes) or '(as given)'} (peak {gib(best.peak_bytes_per_gpu)} GiB per GPU)"
        else:
            what = "nothing the planner may change fits: more GPUs (--min-gpus) or a larger GPU"
        out.print(f"  {algo}: {what}")
        out.print(f"      {commands[algo]}", soft_wrap=True)


def speed(ratio: float | None) -> str:
    """A speed relative to PPO (``CompareRow.speed_vs_ppo``, PPO's seconds per prompt ÷ this run's): '2.1× faster',
    '1.1× slower', 'same' within 5 %."""
    if ratio is None:
        return ""
    if 1 / 1.05 < ratio < 1.05:
        return "same"
    return f"{ratio:.1f}× faster" if ratio > 1 else f"{1 / ratio:.1f}× slower"


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def compare(result: CompareReport) -> None:
    """Side by side (``memplan.comparison.compare_algorithms``): verdict, peak per GPU, the phase that sets it,
    resident models ('reference=actor': the LoRA-disabled actor), host RAM, the saving relative to PPO
    (estimated even when PPO is not listed), and the estimated seconds per step and speed relative to PPO
    (``memplan.step_time``)."""
    out = _console()
    req = result.request
    model = req.model if isinstance(req.model, str) else f"inline {req.model.model_type}"
    table = Table(title=f"{model} · {req.gpus}: algorithms compared", title_justify="left")
    for col in ("algo", "verdict", "peak GiB", "headroom GiB", "peak phase", "resident models",
                "host GiB/node", "vs ppo", "s/step", "speed vs ppo"):
        table.add_column(col, justify="right" if "GiB" in col or col.startswith(("vs", "s/", "speed")) else "left")
    for row in result.rows:
        if row.error is not None:
            table.add_row(row.algo, Text("CANNOT RUN", style="red"), "", "", "", row.error, "", "", "", "")
            continue
        assert row.peak_bytes_per_gpu is not None and row.headroom_bytes is not None
        word, colour = VERDICTS[row.verdict or ("fits" if row.fits else "does_not_fit")]
        verdict = Text(word if row.verdict != "does_not_fit" or row.headroom_bytes < 0
                       else _failed(row.reasons).upper() or word, style=colour)
        saving = ""
        if row.saving_vs_ppo_pct is not None and row.algo != "ppo":
            pct = row.saving_vs_ppo_pct
            saving = f"{pct:.0f}% less" if pct >= 0 else f"{-pct:.0f}% more"
        table.add_row(row.algo, verdict, gib(row.peak_bytes_per_gpu), gib(row.headroom_bytes), row.peak_phase or "",
                      ", ".join(row.roles), gib(row.host_bytes_per_node or 0), saving, seconds(row.seconds_per_step),
                      speed(row.speed_vs_ppo) if row.algo != "ppo" else "")
    out.print(table)
    if result.ppo_peak_bytes_per_gpu is not None and all(row.algo != "ppo" for row in result.rows):
        time = "" if result.ppo_seconds_per_step is None else f", {seconds(result.ppo_seconds_per_step)} s per step"
        out.print(f"vs ppo: PPO with the same knobs peaks at {gib(result.ppo_peak_bytes_per_gpu)} GiB per GPU{time}")
    if any(row.seconds_per_step is not None for row in result.rows):
        out.print("s/step, speed vs ppo: memplan's time model (memplan time), per prompt, same knobs — an estimate, "
                  "not a measurement: on the ReMax paper's own runs it puts PPO at ~1.2× ReMax's time per prompt "
                  "where 2.1× was measured (docs/time.md: what is unexplained)", style="dim")


def _value(field: str, value: Any) -> str:
    if value is None:
        return "(--zero-stage)" if field.endswith("zero_stage") else "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def changes(diff: dict[str, tuple[Any, Any]]) -> str:
    """'--actor-zero-stage 2→3, --offload-ref on→off' (request fields as CLI options)."""
    from memplan.cli.options import option_name

    return ", ".join(f"{option_name(f)} {_value(f, old)}→{_value(f, new)}" for f, (old, new) in diff.items())


def _candidate_line(word: str, c: PlanCandidate, capacity: int) -> Text:
    text = Text(word, style=f"bold {VERDICTS[c.verdict][1]}")
    text.append(f"  peak {gib(c.peak_bytes_per_gpu)} GiB per GPU in {c.peak_phase} · capacity {gib(capacity)} GiB"
                f" · headroom {gib(c.headroom_bytes)} GiB · host {gib(c.host_bytes_per_node)} GiB/node"
                + ("" if c.host_fits else " (EXCEEDS the node's RAM)"))
    if c.reasons and c.host_fits:
        text.append(f" ({_failed(c.reasons)})")
    return text


FIRST = {"fastest": "fastest first", "fewest-gpus": "fewest GPUs first, then fastest",
         "cheapest": "fewest GPU-hours first"}
BEST = {"fastest": "Fastest", "fewest-gpus": "Fewest GPUs", "cheapest": "Cheapest"}


def _time_cells(report: PlanReport, c: PlanCandidate) -> list[str]:
    """s/step, s/prompt, and with a data set its wall hours (and price)."""
    per_prompt = c.seconds_per_prompt() if c.wall_seconds is None else (
        c.seconds_per_step / c.prompts_per_step if c.seconds_per_step and c.prompts_per_step else None)
    cells = [seconds(c.seconds_per_step), "" if per_prompt is None else f"{per_prompt:.3f}"]
    if report.dataset_samples is not None:
        cells.append("" if c.wall_seconds is None else f"{c.wall_seconds / 3600:.2f}")
        if report.price_per_gpu_hour is not None:
            cells.append("" if c.price is None else f"{c.price:,.0f}")
    return cells


def plan(report: PlanReport) -> None:
    """The plan: the request as given, then the configurations that fit, best first by the objective (or the
    closest); each with its estimated time beside its memory."""
    out = _console()
    req = report.request
    given = report.as_given
    capacity = given.peak_bytes_per_gpu + given.headroom_bytes
    out.print(f"Plan: {_title_of(req)}")
    line = _candidate_line("As given: " + verdict_word(given.verdict), given, capacity)
    if given.seconds_per_step is not None:
        line.append(f" · {seconds(given.seconds_per_step)} s per step (estimated)")
    out.print(line)
    if report.fits_any:
        what = ("Changes that make it fit" if report.mode == "fix"
                else "Cheaper settings that still fit (the request fits as given)")
        table = Table(title=f"{what}, {FIRST[report.objective]} (GiB per GPU; host: GiB per node; times estimated)",
                      title_justify="left")
        time_cols = ["s/step", "s/prompt"]
        if report.dataset_samples is not None:
            time_cols.append("wall h")
            if report.price_per_gpu_hour is not None:
                time_cols.append("price")
        for col in ("#", "change (given→new)", "peak", "headroom", "peak phase", "host", *time_cols, "offloads",
                    "recompute", "TP", "ZeRO Σ", "batch"):
            table.add_column(col, justify="left" if col in ("change (given→new)", "peak phase") else "right",
                             ratio=3 if col.startswith("change") else None)
        for i, c in enumerate(report.candidates, 1):
            table.add_row(str(i), changes(c.changes) or "(none)", gib(c.peak_bytes_per_gpu), gib(c.headroom_bytes),
                          c.peak_phase, gib(c.host_bytes_per_node), *_time_cells(report, c), str(c.cost["cpu_offloads"]),
                          "yes" if c.cost["recompute"] else "no", str(c.cost["tp"]), str(c.cost["zero_stage_total"]),
                          str(c.request.micro_batch_size))
        out.print(table)
        best = report.candidates[0]
        out.print(Text(f"{BEST[report.objective]}: ", style="bold").append(changes(best.changes) or "(as given)"))
    else:
        closest = report.candidates[0]
        over = closest.peak_bytes_per_gpu - capacity
        out.print(Text("NOTHING FITS with the allowed knobs ", style="bold red").append(
            f"({', '.join(report.knobs) or 'none could change'})."))
        out.print(_candidate_line("Closest: " + (changes(closest.changes) or "(as given)"), closest, capacity))
        if over > 0:
            out.print(f"still {gib(over)} GiB per GPU over; allow more knobs (--allow), more GPUs (--min-gpus), "
                      "or a larger GPU")
        elif closest.verdict == "tight" and not report.allow_tight:
            out.print("the closest is TIGHT (within memplan's error band of capacity): --allow-tight counts it")
    out.print(f"objective: {report.objective} (memplan time's estimate; LoRA for full fine-tuning last) · ties: "
              f"{', '.join(report.cost_order)} (lower first) · searched: {', '.join(report.knobs)} · "
              f"{report.evaluations} estimates in {report.elapsed_ms:.0f} ms")
    for note in report.notes:
        if not note.startswith("nothing fits"):  # said above
            out.print(f"• {note}")


def limit(report: LimitReport) -> None:
    """``--max-batch`` / ``--max-rollout-batch`` / ``--max-score-batch`` / ``--min-gpus``: the limit, and the
    estimates either side."""
    out = _console()
    out.print(f"{_title_of(report.request)}")
    what = {"max_micro_batch_size": "Largest micro batch per GPU that fits",
            "max_rollout_batch_size": "Largest rollout batch per GPU (prompts) that fits",
            "max_score_micro_batch_size": "Largest scoring micro batch per GPU that fits",
            "min_gpus": "Fewest GPUs that fit",
            "max_max_tokens_per_gpu": "Largest token cap of a training micro batch per GPU that fits (tokens)",
            "max_score_max_tokens_per_gpu": "Largest token cap of a scoring forward per GPU that fits (tokens)",
            }[report.search]
    if report.time_budget_seconds is not None:
        what += f" and finish within {report.time_budget_seconds / 3600:.2f} h (estimated)"
    value = getattr(report, report.search)
    if value is None:
        out.print(Text(f"{what}: NONE", style="bold red").append(
            "  (even the smallest batch does not fit)" if report.search != "min_gpus"
            else "  (not even 4096 GPUs with these knobs: shard or offload, see memplan plan)"))
        if not report.allow_tight:
            out.print("FITS only: --allow-tight also counts a TIGHT run (within memplan's error band of capacity)")
    else:
        out.print(Text(f"{what}: {value}", style="bold green"))
    field = {"max_micro_batch_size": "micro_batch_size", "max_rollout_batch_size": "rollout_batch_size",
             "max_score_micro_batch_size": "score_micro_batch_size", "min_gpus": "gpus",
             "max_max_tokens_per_gpu": "max_tokens_per_gpu",
             "max_score_max_tokens_per_gpu": "score_max_tokens_per_gpu"}[report.search]
    for c in (report.at_limit, report.past_limit):
        if c is not None:
            capacity = c.peak_bytes_per_gpu + c.headroom_bytes
            setting = getattr(c.request, field)
            out.print(_candidate_line(f"  {field} {setting}: " + verdict_word(c.verdict), c, capacity))
            if c.wall_seconds is not None:
                out.print(f"    {seconds(c.seconds_per_step)} s per step, {c.wall_seconds / 3600:.2f} h for the data "
                          "set (estimated)", highlight=False)
    out.print(f"{report.elapsed_ms:.0f} ms")


def models(items: Iterable[Any]) -> None:
    out = _console()
    table = Table(title="Model catalog", title_justify="left")
    for col in ("name", "aliases", "params", "type"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for m in items:
        table.add_row(m.name, ", ".join(getattr(m, "aliases", ()) or ()), f"{m.num_params / 1e9:.2f}B",
                      str(getattr(m, "model_type", "")))
    out.print(table)


def gpus(items: Iterable[Any]) -> None:
    out = _console()
    table = Table(title="GPU catalog", title_justify="left")
    for col in ("name", "memory GiB", "CUDA context GiB", "bf16 TFLOPS"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for g in items:
        tflops = getattr(g, "bf16_tflops", None)
        table.add_row(g.name, gib(g.memory_bytes), gib(getattr(g, "cuda_context_bytes", 0) or 0),
                      f"{tflops:g}" if tflops else "")
    out.print(table)


def trace(result: Any, report: Report | None = None) -> None:
    """A fake-tensor trace (``memplan.harness.TraceReport``): live bytes at each phase's peak by category,
    beside the estimate's phase totals when ``report`` is given.

    A trace sees tensors only, so the estimate is compared net of its fixed costs (CUDA context, cuBLAS
    workspace, NCCL buffers: ``report.fixed_bytes``), which no trace can see; the fixed costs are printed
    on their own line.
    """
    out = _console()
    req = result.request
    unit, size = ("GiB", GiB) if result.peak_bytes >= GiB else ("MiB", 1024**2)  # tiny models: MiB

    def fmt(n_bytes: int | float) -> str:
        return f"{n_bytes / size:.2f}"

    table = Table(title=f"Traced live bytes at each phase's peak ({unit}): {_title_of(req)}", title_justify="left")
    table.add_column("category")
    for ph in result.phases:
        table.add_column(ph.phase + (" (peak)" if ph.phase == result.peak_phase else ""), justify="right")
    for cat in CATEGORIES:
        values = [getattr(ph.breakdown, cat) for ph in result.phases]
        if any(values):
            table.add_row(cat, *(fmt(v) for v in values))
    table.add_row("traced peak", *(fmt(ph.peak_bytes) for ph in result.phases), style="bold")
    table.add_row("at op", *(ph.peak_op or "" for ph in result.phases))
    if report is not None:
        net = {ph.phase: ph.total_bytes - report.fixed_bytes for ph in report.phases}
        table.add_row("estimate, net of fixed", *(fmt(net[ph.phase]) if ph.phase in net else ""
                                                  for ph in result.phases))
        table.add_row("estimate ÷ traced", *(
            f"{net[ph.phase] / ph.peak_bytes:.3f}" if ph.phase in net and ph.peak_bytes else ""
            for ph in result.phases))
    out.print(table)
    out.print(f"traced peak {gib(result.peak_bytes)} GiB in {result.peak_phase}; world size {result.world_size}; "
              f"{result.seconds:.1f} s")
    if report is not None:
        out.print(f"estimated peak {gib(report.peak_bytes_per_gpu)} GiB per GPU = "
                  f"{gib(report.peak_bytes_per_gpu - report.fixed_bytes)} GiB compared above + "
                  f"{gib(report.fixed_bytes)} GiB fixed (CUDA context, cuBLAS workspace, NCCL buffers), "
                  "which a trace cannot see")
    for note in result.notes:
        out.print(f"• {note}")


def measured(record: Any) -> None:
    """A CUDA measurement (``memplan.harness.CudaRecord``): peaks per phase and the estimate's ratio."""
    out = _console()
    table = Table(title=f"Measured on {record.gpu_name} (GiB): {_title_of(record.request)}", title_justify="left")
    for col in ("phase", "max allocated", "max reserved", "NVML used"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for ph in record.phases:
        nvml = gib(ph.nvml_used_bytes) if ph.nvml_used_bytes is not None else ""
        table.add_row(ph.phase, gib(ph.max_allocated_bytes), gib(ph.max_reserved_bytes), nvml)
    out.print(table)
    out.print(f"peak allocated {gib(record.peak_allocated_bytes)} GiB, reserved {gib(record.peak_reserved_bytes)} "
              f"GiB in {record.peak_phase}; torch {record.torch_version}, CUDA {record.cuda}, driver {record.driver}")
    if record.estimate_peak_bytes:
        ratio = record.estimate_peak_bytes / record.peak_reserved_bytes if record.peak_reserved_bytes else 0.0
        out.print(f"estimate {gib(record.estimate_peak_bytes)} GiB; estimate ÷ reserved = {ratio:.3f}")
    if record.traced_peak_bytes:
        out.print(f"traced {gib(record.traced_peak_bytes)} GiB")
    for note in record.notes:
        out.print(f"• {note}")


def _title_of(req: Any) -> str:
    model = req.model if isinstance(req.model, str) else f"inline {req.model.model_type}"
    return f"{model} · {req.algo} · {req.gpus}"
