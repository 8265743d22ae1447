"""``memplan gpus``: the GPU catalog."""

from __future__ import annotations

from memplan import catalog
from memplan.cli import render
from memplan.cli.options import JsonOption, cli_errors


def gpus(json: JsonOption = False) -> None:
    """List the catalog's GPUs: memory, CUDA context, bf16 TFLOPS."""
    with cli_errors():
        items = catalog.list_gpus()
    if json:
        render.json_out(items)
    else:
        render.gpus(items)
