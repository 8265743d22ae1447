"""The service against bad and hostile input: what it answers, how fast, and what schemathesis finds.

    python benchmarks/bad_input.py

Starts a real ``uvicorn api.main:app`` on a loopback port (``api_load.server``), then

1. sends each kind of bad request in BAD (non-finite numbers, lone surrogates, oversized names and keys, a
   model path inside a launch script, lax types, a body over the limit) ``REQUESTS`` times over keep-alive
   connections and records the statuses and the time to the refusal (``api_load.drive``);
2. runs schemathesis' CLI against the live schema with every check (``--checks all``, its own
   ``positive_data_acceptance`` excluded: ``tests/test_api_fuzz.py`` replaces it with a stricter one), in
   positive and negative modes, and records the cases it ran and the failures it reported, 5xx included.

Writes benchmarks/results/bad_input.md (command, machine, date).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder
from api_load import HOST, drive, server, versions

# --- configuration -------------------------------------------------------------------------------------
REQUESTS = 2_000  # per kind of bad request
CONCURRENCY = 4
ST_MAX_EXAMPLES = 100  # schemathesis cases per operation and mode
ST_SEED = 1  # fixed, so a rerun generates the same cases
HEADLINE = {"model": "meta-llama/Llama-2-7b-hf", "algo": "ppo", "gpus": "8xA100-40GB"}
VERL = ("actor_rollout_ref.rollout.name=vllm actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1 "
        "actor_rollout_ref.model.path=")
OUT = Path(__file__).parent / "results" / "bad_input.md"
ROOT = Path(__file__).resolve().parents[1]
# ---------------------------------------------------------------------------------------------------------


def raw(path: str, body: str | bytes) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(data)}\r\n"
            "Content-Type: application/json\r\n\r\n").encode() + data


def _with(field: str, literal: str) -> str:
    return json.dumps({**HEADLINE, field: "__X__"}).replace('"__X__"', literal)


BAD = {
    "prompt_len NaN": raw("/v1/estimate", _with("prompt_len", "NaN")),
    "vllm_gpu_memory_utilization -Infinity": raw("/v1/estimate", _with("vllm_gpu_memory_utilization", "-Infinity")),
    "model a lone surrogate": raw("/v1/estimate", _with("model", '"\\ud800"')),
    "model 60 KB": raw("/v1/estimate", json.dumps({**HEADLINE, "model": "x" * 60_000})),
    "an unknown 60 KB key": raw("/v1/estimate", json.dumps({**HEADLINE, "k" * 60_000: 1})),
    "prompt_len true": raw("/v1/estimate", _with("prompt_len", "true")),
    'prompt_len "256"': raw("/v1/estimate", _with("prompt_len", '"256"')),
    "verl script, model /etc/passwd": raw("/v1/verl/estimate", json.dumps({"script": VERL + "/etc/passwd",
                                                                            "gpu": "H100-80GB"})),
    "verl script, model /proc/self/environ": raw("/v1/verl/estimate", json.dumps(
        {"script": VERL + "/proc/self/environ", "gpu": "H100-80GB"})),
    "body of 5 MB": raw("/v1/estimate", json.dumps({**HEADLINE, "model": "x" * (5 << 20)})),
}


def schemathesis_run(port: int) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"http://{HOST}:{port}/openapi.json", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance", "--mode", "all", "--max-examples", str(ST_MAX_EXAMPLES),
           "--seed", str(ST_SEED), "--no-color"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1_200)
    out = proc.stdout + proc.stderr
    cases = re.search(r"(\d[\d,]*) generated", out)
    failures = re.findall(r"^\s*❌ (ST\d+ .+)$", out, re.M)
    summary = (f"{cases.group(1) if cases else '?'} cases generated; "
               + ("failures: " + "; ".join(failures) if failures else "no failures (no 5xx, no check failed)"))
    return " ".join(["schemathesis", *cmd[4:]]), summary


def main() -> None:
    rows = []
    with server(1) as port:
        for name, payload in BAD.items():
            asyncio.run(drive(port, [payload], 50, CONCURRENCY))
            r = asyncio.run(drive(port, [payload], REQUESTS, CONCURRENCY))
            rows.append((name, r))
            print(name, r["statuses"], round(r["p50"], 2), round(r["p99"], 2), flush=True)
        command, summary = schemathesis_run(port)
    print(summary)
    lines = [
        "# The service against bad input",
        "",
        "Command: `python benchmarks/bad_input.py`  ",
        f"Machine: {machine(load_average=True)}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Software: {versions()}",
        "",
        f"One `uvicorn api.main:app` worker on {HOST}; each kind of bad request sent {REQUESTS:,} times over "
        f"{CONCURRENCY} keep-alive connections (after 50 warm-up requests): the statuses it got and the time to "
        "the refusal, in ms.",
        "",
        "| bad request | statuses | req/s | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
        lines.append(f"| {name} | {statuses} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} |")
    lines += ["", f"Schemathesis against the same server: `{command}`  ", summary, ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
