"""``--emit``, ``--row`` and ``--out`` of ``memplan plan`` and ``memplan estimate``: the launch files (or the
cluster resources) of the configuration picked, written by ``memplan.emit``.

To stdout (two files, TRL's recipe and accelerate config, each under a ``# ==> name <==`` line, as ``head`` labels
files), or with ``--out``: a file (one file; a folder that exists gets the file's own name inside it) or a folder
(TRL: created if missing, both files inside). The command's table still prints when ``--out`` is given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from memplan.cli.options import OUTPUT, escape
from memplan.emit import TARGETS, Emitted, emit
from memplan.errors import InputError
from memplan.report import EstimateRequest

EmitOption = Annotated[str | None, typer.Option(
    "--emit", metavar="<target>", help=escape(
        f"Write the launch file of the configuration ({' | '.join(TARGETS[:3])}: the framework's script, or TRL's "
        f"recipe and accelerate config) or the cluster resources to ask for ({' | '.join(TARGETS[3:])}: a "
        "placement group's bundles, a SkyPilot resources block, a KubeRay worker group); read back by memplan's "
        "own reader, it is the run estimated, or an error names the field the framework cannot carry. To stdout, "
        "or --out"), rich_help_panel=OUTPUT, show_default=False)]
OutOption = Annotated[Path | None, typer.Option(
    "--out", help="With --emit: write to this file (TRL: this folder) instead of stdout", rich_help_panel=OUTPUT,
    show_default=False)]
RowOption = Annotated[int | None, typer.Option(
    "--row", help="With --emit: the plan's configuration to write, 1 = the first ranked (default: the request as "
    "given)", rich_help_panel=OUTPUT, show_default=False)]


def check(target: str | None, out: Path | None, row: int | None) -> None:
    """The options' combination, before any search runs."""
    if target is None:
        for name, value in (("out", out), ("row", row)):
            if value is not None:
                raise InputError(name, "goes with --emit (what to write)", str(value))
    elif target.strip().lower() not in TARGETS:
        raise InputError("emit", f"unknown target {target!r}; allowed: {', '.join(TARGETS)}", target)


def picked(request: EstimateRequest, candidates: tuple, row: int | None) -> EstimateRequest:
    """The request of the plan's row ``row`` (1-based), or ``request`` itself without one."""
    if row is None:
        return request
    if not candidates:
        raise InputError("row", "this plan lists no configuration to pick", row)
    if not 1 <= row <= len(candidates):
        raise InputError("row", f"must be 1..{len(candidates)} (the plan's rows)", row)
    return candidates[row - 1].request


def write(request: EstimateRequest, target: str, out: Path | None, row: int | None = None) -> Emitted:
    """Emit ``target`` for ``request`` (the plan's row ``row``) to stdout or ``out``; where it went on stderr."""
    try:
        emitted = emit(request, target)
    except InputError as err:
        if row is None:
            raise
        message = str(err).removeprefix(f"{err.field}: ")
        raise InputError(err.field, f"row {row}: {message}; pick another row, or --allow only knobs "
                         f"{target} sets", err.value) from None
    if out is None:
        many = len(emitted.files) > 1
        for item in emitted.files:
            if many:
                sys.stdout.write(f"# ==> {item.name} <==\n")
            sys.stdout.write(item.text)
        print(f"emit: {emitted.read_back}", file=sys.stderr)
        return emitted
    out = out.expanduser()
    if len(emitted.files) > 1 or out.is_dir():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError("out", f"cannot make the folder {str(out)!r}: {exc.strerror}", str(out)) from None
        paths = [out / item.name for item in emitted.files]
    else:
        paths = [out]
    for path, item in zip(paths, emitted.files):
        try:
            path.write_text(item.text)
        except OSError as exc:
            raise InputError("out", f"cannot write {str(path)!r}: {exc.strerror}", str(path)) from None
        print(f"emit: wrote {path}", file=sys.stderr)
    for note in emitted.notes:
        print(f"emit: {note}", file=sys.stderr)
    return emitted
