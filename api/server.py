"""Run the service under uvicorn, with TCP_NODELAY on every connection whatever the worker count.

``uvicorn --workers N`` (N > 1) binds the listening socket itself with ``proto`` 0; accepted sockets inherit
it and asyncio sets TCP_NODELAY only when ``proto == IPPROTO_TCP``, so Nagle's algorithm stays on and
each keep-alive request after the first waits ~40 ms for the client's delayed ACK (uvicorn issue #3149,
seen here: 44 ms p50 with 2 workers vs 2 ms with 1). ``serve`` binds through a ``Config`` that
re-creates that socket with ``IPPROTO_TCP``. ``memplan serve`` and the Docker image run this module:

    python -m api.server --host 0.0.0.0 --port 8000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

APP = "api.main:app"


class NoDelayConfig(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        return sock


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "warning") -> None:
    """Serve ``api.main:app``; with ``workers > 1`` one process per worker sharing one listening socket."""
    config = NoDelayConfig(APP, host=host, port=port, workers=workers, log_level=log_level, access_log=False)
    server = uvicorn.Server(config)
    if workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()  # uvicorn binds via getaddrinfo here: proto is already IPPROTO_TCP


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.workers, args.log_level)


if __name__ == "__main__":
    main()
