"""Terminal output of the CLI: the only module that imports rich.

Each command computes one result with one library call and hands it here: ``estimate`` (phases ×
categories, roles, verdict, deciding terms, notes), ``compare``, the catalogs, and traces. Numbers are
bytes until this module formats them in GiB (``memplan.units``). ``json_out`` prints any pydantic model
or plain data as JSON — plain ``print``, so pipes get exactly the JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from memplan.report import Breakdown, Report
from memplan.units import GiB

CATEGORIES = [f for f in Breakdown.model_fields]  # parameter … other, in torch's order


def _console() -> Console:
    return Console(highlight=False)  # made per call: CliRunner swaps sys.stdout


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


def _verdict(report: Report) -> Text:
    word, style = ("FITS", "bold green") if report.fits else ("DOES NOT FIT", "bold red")
    text = Text(word, style=style)
    peak = next((p for p in report.phases if p.phase == report.peak_phase), None)
    activity = f" ({peak.activity})" if peak is not None and peak.activity else ""
    text.append(
        f"  peak {gib(report.peak_bytes_per_gpu)} GiB per GPU in {report.peak_phase}{activity}"
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
    for note in report.notes:
        out.print(f"• {note}")


def compare(reports: Sequence[Report]) -> None:
    """Side by side: peak per GPU, verdict, peak phase, resident models, saving relative to PPO."""
    out = _console()
    base = next((r for r in reports if r.request.algo == "ppo"), reports[0] if reports else None)
    base_name = base.request.algo if base else ""
    table = Table(title=f"{_title(reports[0])}: compared" if reports else "compared", title_justify="left")
    for col in ("algo", "verdict", "peak GiB", "headroom GiB", "peak phase", "resident models",
                f"vs {base_name}"):
        table.add_column(col, justify="right" if "GiB" in col or col.startswith("vs") else "left")
    for r in reports:
        saving = ""
        if base is not None and r is not base and base.peak_bytes_per_gpu:
            delta = 1 - r.peak_bytes_per_gpu / base.peak_bytes_per_gpu
            saving = f"{delta:.0%} less" if delta >= 0 else f"{-delta:.0%} more"
        verdict = Text("FITS", style="green") if r.fits else Text("DOES NOT FIT", style="red")
        table.add_row(r.request.algo, verdict, gib(r.peak_bytes_per_gpu), gib(r.headroom_bytes), r.peak_phase,
                      ", ".join(m.role for m in r.models), saving)
    out.print(table)


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
    beside the estimate's phase totals when ``report`` is given."""
    out = _console()
    req = result.request
    table = Table(title=f"Traced live bytes at each phase's peak (GiB): {_title_of(req)}", title_justify="left")
    table.add_column("category")
    for ph in result.phases:
        table.add_column(ph.phase + (" (peak)" if ph.phase == result.peak_phase else ""), justify="right")
    for cat in CATEGORIES:
        values = [getattr(ph.breakdown, cat) for ph in result.phases]
        if any(values):
            table.add_row(cat, *(gib(v) for v in values))
    table.add_row("traced peak", *(gib(ph.peak_bytes) for ph in result.phases), style="bold")
    table.add_row("at op", *(ph.peak_op or "" for ph in result.phases))
    if report is not None:
        est = {ph.phase: ph.total_bytes for ph in report.phases}
        table.add_row("estimate", *(gib(est[ph.phase]) if ph.phase in est else "" for ph in result.phases))
        table.add_row("estimate ÷ traced", *(
            f"{est[ph.phase] / ph.peak_bytes:.3f}" if ph.phase in est and ph.peak_bytes else ""
            for ph in result.phases))
    out.print(table)
    out.print(f"traced peak {gib(result.peak_bytes)} GiB in {result.peak_phase}; world size {result.world_size}; "
              f"{result.seconds:.1f} s")
    if report is not None:
        out.print("the estimate adds what a trace cannot see: CUDA context, cuBLAS workspace, NCCL buffers "
                  f"({gib(report.fixed_bytes)} GiB fixed per GPU)")
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
