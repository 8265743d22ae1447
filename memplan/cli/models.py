"""``memplan models``: the model catalog."""

from __future__ import annotations

from memplan import catalog
from memplan.cli import render
from memplan.cli.options import JsonOption, cli_errors


def models(json: JsonOption = False) -> None:
    """List the catalog's models: name, aliases, parameter count, family."""
    with cli_errors():
        items = catalog.list_models(fixtures=False)  # memplan/tiny-*: test fixtures, not models users have
    if json:
        render.json_out(items)
    else:
        render.models(items)
