"""``memplan serve``: the REST service (api/) under uvicorn; says where it listens before it starts."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from memplan.cli.options import cli_errors
from memplan.errors import EnvironmentProblem, InputError


def _url(host: str, port: int) -> str:
    """The URL to open: a wildcard address is reached locally as 127.0.0.1 (or [::1])."""
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{local}]:{port}" if ":" in local else f"http://{local}:{port}"


def _check_free(host: str, port: int) -> None:
    """Bind once before uvicorn does, so a taken port or an unknown host is one ``error:`` line, not a log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError("host", f"cannot resolve {host!r}: {exc}", host) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            raise InputError("port", f"cannot listen on {host}:{port}: {exc.strerror}", port) from None


def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the service to the network")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (one per core)")] = 1,
) -> None:
    """Serve the REST API (POST /v1/estimate, /v1/compare, /v1/plan, /v1/verl/estimate, /v1/trl/estimate, /v1/openrlhf/estimate; GET /v1/models, /v1/gpus, /healthz; API docs at /docs) and print its address."""
    with cli_errors():
        try:
            import fastapi  # noqa: F401
            import fastapi_offline  # noqa: F401  (the /docs assets)

            from api.server import serve as run_server
        except ImportError:
            raise EnvironmentProblem("the service needs fastapi, uvicorn and fastapi-offline: "
                                     "pip install 'memplan[api]'") from None
        _check_free(host, port)
    url = _url(host, port)
    where = "all interfaces" if host in ("0.0.0.0", "::", "") else host
    print(f"memplan API listening on {where}, port {port} ({workers} worker{'s' if workers > 1 else ''}): {url}\n"
          f"  docs: {url}/docs  ·  health: {url}/healthz  ·  stop: Ctrl-C", flush=True)
    run_server(host=host, port=port, workers=workers)
