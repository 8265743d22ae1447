"""``memplan compare``: one model and cluster under several algorithms, side by side."""

from __future__ import annotations

from typing import Annotated, get_args

import typer

import memplan
from memplan.cli import render
from memplan.cli.options import BATCH_SEMANTICS, JsonOption, request_command
from memplan.errors import InputError
from memplan.report import Algo, EstimateRequest

ALGOS = get_args(Algo)


def parse_algos(text: str) -> list[str]:
    """'ppo,grpo , remax' → ['ppo', 'grpo', 'remax']; names checked against ``memplan.report.Algo``."""
    names = [a.strip().lower() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in ALGOS]
    if bad or not names:
        problem = f"unknown algorithm {bad[0]!r}" if bad else "no algorithm given"
        raise InputError("algos", f"{problem}; allowed: {', '.join(ALGOS)}", text)
    return list(dict.fromkeys(names))


@request_command
def compare(
    request: EstimateRequest,
    algos: Annotated[str, typer.Option(help="Comma-separated algorithms to compare (overrides --algo)")] = (
        "ppo,grpo,remax,rloo,dpo"),
    json: JsonOption = False,
) -> None:
    requests = [request.model_copy(update={"algo": a}) for a in parse_algos(algos)]
    # model_copy skips validation; re-validate so an algorithm's own checks run on its request
    requests = [EstimateRequest.model_validate(r.model_dump()) for r in requests]
    reports = memplan.compare(requests)
    if json:
        render.json_out(reports)
    else:
        render.compare(reports)


compare.__doc__ = f"""Compare algorithms on the same model and cluster: peak per GPU, resident models, the phase that sets the peak and the saving relative to PPO.

Example: memplan compare --model meta-llama/Llama-2-7b-hf --gpus 8xA100-40GB --algos ppo,remax,grpo

{BATCH_SEMANTICS}
"""
