"""``memplan validate``: the estimate against the corpus of real GPU measurements (benchmarks/corpus/)."""

from __future__ import annotations

import json as json_module
from pathlib import Path
from typing import Annotated

import typer

from memplan.errors import InputError


def validate(
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="A corpus file (*.jsonl) or a directory of them; default: benchmarks/corpus/ and the "
        "`memplan measure` records under benchmarks/results/cuda/")] = None,
    points: Annotated[bool, typer.Option(
        "--points/--summary-only", help="Print every record, or only the per-phase summary")] = True,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table")] = False,
) -> None:
    """Estimate every measured point of the corpus and compare: measured vs estimated (GiB) and the signed error
    per record, then per phase median |error|, p90, the worst under- and over-estimate, and the fit/OOM verdicts.

    An NVML device peak is compared to the phase's total per GPU with fixed bytes (CUDA context, cuBLAS, NCCL),
    net of NVML's driver reserve where the record gives NVML's total; torch's max_memory_allocated/reserved net of
    the fixed bytes.
    """
    from memplan import validate as v

    if corpus is not None and not corpus.exists():
        typer.echo(f"--corpus: no such file or directory: {corpus}", err=True)
        raise typer.Exit(2)
    try:
        records = v.load_corpus(corpus)
    except InputError as e:
        typer.echo(f"error: --{e}", err=True)
        raise typer.Exit(2) from None
    summary = v.validate(records, corpus=(v.corpus_name(corpus),))
    if json:
        typer.echo(json_module.dumps(summary.as_dict(), indent=1))
    else:
        typer.echo(v.format_table(summary, points=points))
