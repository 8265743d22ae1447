"""The service under a real uvicorn: ``api.server`` with several workers keeps TCP_NODELAY (no 40 ms stalls).

uvicorn's own ``--workers N`` leaves Nagle's algorithm on (uvicorn issue #3149): each keep-alive request
after the first then waits for the client's delayed ACK, ~40 ms on Linux. Seen here before the fix: 44 ms
p50 with 2 workers against 2 ms with 1.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.server import NoDelayConfig

ROOT = Path(__file__).resolve().parents[1]


def test_bound_socket_is_tcp():
    config = NoDelayConfig("api.main:app", host="127.0.0.1", port=0)
    sock = config.bind_socket()
    try:
        assert sock.proto == socket.IPPROTO_TCP  # accepted sockets inherit it; asyncio then sets NODELAY
        sock.listen()
        client = socket.create_connection(sock.getsockname())
        conn, _ = sock.accept()
        assert conn.proto == socket.IPPROTO_TCP
        conn.close()
        client.close()
    finally:
        sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_keep_alive_latency():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "api.server", "--port", str(port), "--workers", "2"], cwd=ROOT)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.1)
        time.sleep(1.0)  # both workers imported
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        body = '{"model": "meta-llama/Llama-2-7b-hf", "algo": "ppo", "gpus": "8xA100-40GB"}'
        times = []
        for _ in range(12):  # one connection, keep-alive
            t0 = time.perf_counter()
            conn.request("POST", "/v1/estimate", body, {"content-type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            response.read()
            times.append(time.perf_counter() - t0)
        conn.close()
        # Nagle × delayed ACK would put every request after the first at ≥ 40 ms
        assert statistics.median(times[2:]) < 0.030, times
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_command_calls_the_server(monkeypatch):
    import api.server
    from memplan.cli.app import app

    calls = []
    monkeypatch.setattr(api.server, "serve", lambda **kw: calls.append(kw))
    result = CliRunner().invoke(app, ["serve", "--port", "8123", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert calls == [{"host": "127.0.0.1", "port": 8123, "workers": 2}]
