"""``memplan serve``: the REST service (api/) under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from memplan.cli.options import cli_errors
from memplan.errors import EnvironmentProblem


def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the service to the network")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (one per core)")] = 1,
) -> None:
    """Serve the REST API (POST /v1/estimate, /v1/compare, /v1/plan, /v1/verl/estimate, /v1/trl/estimate, /v1/openrlhf/estimate; GET /v1/models, /v1/gpus,
    /healthz)."""
    with cli_errors():
        try:
            import fastapi  # noqa: F401

            from api.server import serve as run_server
        except ImportError:
            raise EnvironmentProblem("the service needs fastapi and uvicorn: pip install 'memplan[api]'") from None
    run_server(host=host, port=port, workers=workers)
