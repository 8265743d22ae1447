"""Load-test the REST service: a real uvicorn process on 127.0.0.1, driven by a bounded load generator.

    python benchmarks/api_load.py

For each worker count in WORKERS it starts ``uvicorn api.main:app`` on a free loopback port, then for each
scenario and concurrency sends a fixed number of requests over keep-alive HTTP/1.1 connections (a closed
loop: each connection sends its next request when the previous answer is in) and records throughput and
latency. The generator is a few lines of asyncio over raw sockets, so it costs the 2-core machine less
CPU than an HTTP client library would; it still shares the cores with the server, so the figures are a
floor. Writes benchmarks/results/api_load.md (command, machine, date). Goal: ≥ 1000 req/s, p99 ≤ 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder

# --- configuration -------------------------------------------------------------------------------------
HOST = "127.0.0.1"  # loopback only
RUNNER = os.environ.get("RUNNER", "api.server")  # or "uvicorn": the plain CLI (see api/server.py for why)
WORKERS = [1, 2]
# A folder holding httptools + uvloop (pip install --target DIR httptools uvloop): if set, every worker count
# is also run with them on the server's path (uvicorn picks them up by itself), to show what they buy.
SPEEDUPS = os.environ.get("SPEEDUPS")
CONCURRENCY = [4, 16]
REQUESTS = 5_000  # per scenario and concurrency
WARMUP = 300
TIME_LIMIT_S = 30.0  # per scenario and concurrency: stop early if reached
HEADLINE = {"model": "meta-llama/Llama-2-7b-hf", "algo": "ppo", "gpus": "8xA100-40GB"}
OUT = Path(__file__).parent / "results" / "api_load.md"
ROOT = Path(__file__).resolve().parents[1]
# ---------------------------------------------------------------------------------------------------------


def http_request(method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + data


def distinct_bodies() -> list[bytes]:
    """Different requests (micro-batch × prompt length × algorithm), enough that no body is sent twice to
    one server: every request is a cache miss and runs the estimator."""
    algos = ["ppo", "grpo", "remax", "rloo"]
    bodies = []
    for i in range(WARMUP + REQUESTS * len(CONCURRENCY)):
        body = {**HEADLINE, "algo": algos[i % 4], "micro_batch_size": 1 + (i // 4) % 32,
                "prompt_len": 128 + (i // 128)}
        bodies.append(http_request("POST", "/v1/estimate", body))
    return bodies


SCENARIOS = {
    "GET /healthz": lambda: [http_request("GET", "/healthz")],
    "POST /v1/estimate (same body: cached)": lambda: [http_request("POST", "/v1/estimate", HEADLINE)],
    "POST /v1/estimate (distinct bodies: computed)": distinct_bodies,
}


async def drive(port: int, payloads: list[bytes], total: int, concurrency: int, start: int = 0) -> dict:
    """Send ``total`` requests (``payloads`` from ``start`` on, cycling) over ``concurrency`` connections;
    latencies in ms, throughput in req/s."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    deadline = time.perf_counter() + TIME_LIMIT_S

    async def connection() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while sent < total and time.perf_counter() < deadline:
                payload = payloads[(start + sent) % len(payloads)]
                sent += 1
                t0 = time.perf_counter()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t0) * 1000)
                status = int(head[9:12])
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {
        "n": n, "rps": n / elapsed, "p50": latencies[n // 2], "p99": latencies[min(n - 1, int(0.99 * n))],
        "max": latencies[-1], "statuses": statuses,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(workers: int, speedups: str | None = None):
    port = free_port()
    if RUNNER == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", HOST, "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    else:  # uvicorn with TCP_NODELAY on multi-worker sockets (api/server.py)
        cmd = [sys.executable, "-m", "api.server", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    env = dict(os.environ)
    if speedups:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [speedups, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1).status == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.5 * workers)  # let every worker finish importing
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def versions() -> str:
    import fastapi
    import pydantic
    import uvicorn

    extras = [m for m in ("uvloop", "httptools", "orjson") if _importable(m)]
    return (f"uvicorn {uvicorn.__version__}, fastapi {fastapi.__version__}, pydantic {pydantic.VERSION}; "
            f"installed speedups: {', '.join(extras) or 'none (asyncio loop, h11 parser)'}")


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def main() -> None:
    rows = []
    stacks = [("asyncio + h11", None)] + ([("uvloop + httptools", SPEEDUPS)] if SPEEDUPS else [])
    for stack, speedups in stacks:
        for workers in WORKERS:
            with server(workers, speedups) as port:
                for name, make in SCENARIOS.items():
                    payloads = make()
                    asyncio.run(drive(port, payloads, WARMUP, 4))
                    for i, conc in enumerate(CONCURRENCY):
                        r = asyncio.run(drive(port, payloads, REQUESTS, conc, start=WARMUP + i * REQUESTS))
                        rows.append((stack, workers, name, conc, r))
                        print(stack, workers, name, conc, {k: (round(v, 2) if isinstance(v, float) else v)
                                                           for k, v in r.items()}, flush=True)
    lines = [
        "# REST service load test",
        "",
        "Command: `python benchmarks/api_load.py`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Software: {versions()}",
        "",
        f"A real `uvicorn api.main:app` on {HOST}, a closed-loop load generator (asyncio, raw keep-alive "
        f"HTTP/1.1) in another process on the same cores; {REQUESTS:,} requests per row after {WARMUP} warm-up "
        f"requests, at most {TIME_LIMIT_S:.0f} s per row. Goal: ≥ 1000 req/s with p99 ≤ 20 ms on /v1/estimate.",
        "",
        "| server stack | workers | request | connections | req/s | p50 ms | p99 ms | max ms | statuses |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for stack, workers, name, conc, r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(f"| {stack} | {workers} | {name} | {conc} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['max']:.1f} | {statuses} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
