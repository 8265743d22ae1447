"""The service against a hostile client (issue 15, items 1–4): no file of the server's is read or tested for
existence, no input makes a 5xx or breaks the connection, types are what the schema says, and no answer echoes
unbounded input. Each test failed on 6712be1 (the route, the input and what came back are in its comment).
"""

from __future__ import annotations

import builtins
import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.schemas import HEADLINE, INLINE
from memplan.errors import shown

client = TestClient(create_app(), raise_server_exceptions=False)
ROOT = Path(__file__).resolve().parents[1]

# the launch-file routes, each with a body naming ``{model}`` as its actor's model path and the field it is in
LAUNCH = {
    "/v1/verl/estimate": ({"script": "actor_rollout_ref.rollout.name=vllm trainer.n_gpus_per_node=8 "
                                     "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1 "
                                     "actor_rollout_ref.model.path={model}", "gpu": "H100-80GB"}, "script"),
    "/v1/trl/estimate": ({"recipe": "model_name_or_path: {model}\n", "gpu": "8xH100-80GB"}, "recipe"),
    "/v1/openrlhf/estimate": ({"script": "--pretrain {model} --micro_train_batch_size 1", "gpu": "H100-80GB"},
                              "script"),
    "/v1/deepspeed-chat/estimate": ({"script": "deepspeed main.py --actor_model_name_or_path {model} "
                                               "--enable_hybrid_engine", "gpus": "8xA100-80GB"}, "script"),
}


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A readable model folder: the service must answer for it exactly as for a path that does not exist."""
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@contextlib.contextmanager
def file_access_log(watched: list[str]):
    """Every open/stat/listing of a path under ``watched`` while the block runs (all threads)."""
    seen: list[str] = []
    originals = {"stat": os.stat, "lstat": os.lstat, "open": os.open, "listdir": os.listdir, "scandir": os.scandir}

    def spy(name, fn):
        def wrapper(path, *args, **kwargs):
            text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if any(text.startswith(w) for w in watched):
                seen.append(f"{name} {text}")
            return fn(path, *args, **kwargs)
        return wrapper

    real_open = builtins.open
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in originals.items():
            mp.setattr(os, name, spy(name, fn))
        mp.setattr(builtins, "open", spy("open", real_open))
        mp.setattr(io, "open", spy("open", real_open))
        yield seen


@pytest.mark.parametrize("route", list(LAUNCH))
def test_launch_file_model_paths_are_names_never_files(route: str, model_dir: Path) -> None:
    # 6712be1: POST /v1/openrlhf/estimate '--pretrain /etc/passwd' → "cannot read '/etc/passwd' as JSON", a
    # missing path → "unknown model", a folder with a config.json → its parameters: the server's files, read
    body, field = LAUNCH[route]
    paths = [str(model_dir), str(model_dir / "config.json"), str(model_dir / "missing"), "/etc/passwd",
             "/proc/self/environ"]
    answers = []
    for path in paths:
        sent = {k: v.replace("{model}", path) if isinstance(v, str) else v for k, v in body.items()}
        with file_access_log([str(model_dir), "/etc/passwd", "/proc/self"]) as seen:
            r = client.post(route, json=sent)
        assert seen == [], (route, path, seen)
        assert r.status_code == 422, (route, path, r.text)
        (detail,) = r.json()["detail"]
        assert detail["loc"] == ["body", field]
        assert "is not a catalog model: paths are not accepted" in detail["msg"]
        # the path as the message quotes it (``shown``: cut past 80 characters, as a temporary folder may be)
        answers.append((detail["type"], detail["msg"].replace(shown(path), "<path>")))
    assert len(set(answers)) == 1, answers  # the same answer whether the path exists, is a file or is missing


@pytest.mark.parametrize(("route", "field"), [("/v1/verl/estimate", "script"), ("/v1/openrlhf/estimate", "script"),
                                              ("/v1/trl/estimate", "recipe"), ("/v1/deepspeed-chat/estimate", "script")])
def test_a_launch_file_given_as_a_path_is_not_read(route: str, field: str, tmp_path: Path) -> None:
    # the library reads a launch file given by path; the service takes the text only
    launch = tmp_path / "run.yaml"
    launch.write_text(LAUNCH[route][0][field].replace("{model}", "Qwen/Qwen2.5-7B"))
    with file_access_log([str(tmp_path)]) as seen:
        r = client.post(route, json={**LAUNCH[route][0], field: str(launch)})
    assert seen == []
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text


def test_estimate_model_path_is_refused_unread(model_dir: Path) -> None:
    with file_access_log([str(model_dir)]) as seen:
        for field in ("model", "critic_model", "reward_model"):
            r = client.post("/v1/estimate", json={**HEADLINE, field: str(model_dir)})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text
    assert seen == []


def _numeric_fields() -> list[str]:
    props = create_app().openapi()["components"]["schemas"]["EstimateRequest"]["properties"]
    def numeric(p: dict) -> bool:
        return p.get("type") in ("integer", "number") or any(numeric(b) for b in p.get("anyOf", ()))
    return sorted(name for name, p in props.items() if numeric(p))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422_in_every_numeric_field(literal: str) -> None:
    # 6712be1: {"prompt_len": NaN} → 500 (the validation error echoed nan, which JSON cannot carry)
    fields = _numeric_fields()
    assert {"prompt_len", "vllm_gpu_memory_utilization", "host_ram_bytes_per_node", "tp"} <= set(fields)
    for field in fields:
        raw = json.dumps({**HEADLINE, field: "__X__"}).replace('"__X__"', literal)
        r = client.post("/v1/estimate", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (field, r.status_code, r.text[:200])
        assert r.json()["detail"][0]["loc"] == ["body", field]
    for route, body in (("/v1/plan", lambda x: {"request": {**HEADLINE, "prompt_len": x}}),
                        ("/v1/trl/estimate", lambda x: {**LAUNCH["/v1/trl/estimate"][0], "prompt_len": x}),
                        ("/v1/estimate", lambda x: {**INLINE, "model": {**INLINE["model"], "hidden_size": x}})):
        raw = json.dumps(body("__X__")).replace('"__X__"', literal)
        r = client.post(route, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (route, r.text[:200])


@pytest.mark.parametrize("text", ["\\ud800", "\\udfff", "x\\ud83dy"])
@pytest.mark.parametrize(("route", "field"), [
    ("/v1/estimate", "model"), ("/v1/estimate", "gpus"), ("/v1/estimate", "algo"), ("/v1/verl/estimate", "script"),
    ("/v1/trl/estimate", "recipe"), ("/v1/trl/estimate", "gpu"), ("/v1/openrlhf/estimate", "script"),
])
def test_lone_surrogates_are_422(route: str, field: str, text: str) -> None:
    # 6712be1: {"model": "\ud800"} → 500 (UnicodeEncodeError writing the error that echoed it)
    base = HEADLINE if route == "/v1/estimate" else {k: v.replace("{model}", "Qwen/Qwen2.5-7B")
                                                      for k, v in LAUNCH[route][0].items()}
    raw = json.dumps({**base, field: "__X__"}).replace("__X__", text)
    r = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:200]
    r.content.decode("utf-8")  # the answer is UTF-8 JSON


@pytest.mark.parametrize(("field", "value"), [("prompt_len", True), ("prompt_len", "256"), ("prompt_len", 256.5),
                                              ("cuda_context_bytes", False), ("gradient_checkpointing", 1),
                                              ("gradient_checkpointing", "true"), ("vllm_gpu_memory_utilization", "0.5"),
                                              ("zero_stage", "3")])
def test_types_are_strict(field: str, value: object) -> None:
    # 6712be1: prompt_len true and "256" were taken as 1 and 256, cuda_context_bytes false as a 0-byte context
    r = client.post("/v1/estimate", json={**HEADLINE, field: value})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["detail"][0]["loc"] == ["body", field]


def test_a_whole_number_written_as_a_float_is_the_integer() -> None:
    # JSON Schema's "integer" includes 256.0: the same request as 256
    a = client.post("/v1/estimate", json={**HEADLINE, "prompt_len": 256.0})
    b = client.post("/v1/estimate", json={**HEADLINE, "prompt_len": 256})
    assert a.status_code == 200 and a.json() == b.json()


@pytest.mark.parametrize("body", [
    {**HEADLINE, "model": "x" * 60_000},
    {**HEADLINE, "x" * 60_000: 1},
    {**HEADLINE, "gpus": "8x" + "A" * 60_000},
    {"script": "a.b=" + "c" * 59_000, "gpu": "H100-80GB"},
])
def test_errors_do_not_echo_unbounded_input(body: dict) -> None:
    # 6712be1: a 60 KB model name came back twice in the 422
    route = "/v1/verl/estimate" if "script" in body else "/v1/estimate"
    r = client.post(route, json=body)
    assert r.status_code == 422
    assert len(r.content) < 4_000, len(r.content)


def test_body_over_the_limit_is_413_and_not_echoed() -> None:
    # with fastapi 0.110 (allowed by the old pyproject) a 5 MB body was parsed and echoed in a 10.5 MB 422
    big = json.dumps({**HEADLINE, "model": "x" * (5 << 20)}).encode()
    r = client.post("/v1/estimate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 1_000


def test_unknown_model_suggestions_do_not_scale_with_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # 6712be1: suggestions for a 1 MB unknown name took 150 ms in the Python API (difflib over the whole name)
    import difflib

    from memplan.catalog import get_model
    from memplan.errors import UnknownModelError

    calls: list[int] = []
    real = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches", lambda word, *a, **k: calls.append(len(word)) or real(word, *a, **k))
    with pytest.raises(UnknownModelError) as err:
        get_model("x" * 1_000_000)
    assert calls == [] and len(str(err.value)) < 400
    with pytest.raises(UnknownModelError, match="did you mean 'meta-llama/Llama-2-7b-hf'"):
        get_model("meta-llama/Llama-2-7b-hff")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bad_request_leaves_the_keep_alive_connection_usable() -> None:
    # 6712be1, under uvicorn: {"prompt_len": NaN} → 500, and the next request on the connection was reset
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port), "--log-level",
                               "warning"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        headers = {"content-type": "application/json"}
        for raw in ('{"model": "llama-2-7b", "prompt_len": NaN}', '{"model": "\\ud800"}',
                    '{"model": "llama-2-7b", "vllm_gpu_memory_utilization": -Infinity}'):
            conn.request("POST", "/v1/estimate", body=raw, headers=headers)
            bad = conn.getresponse()
            assert bad.status == 422, bad.read()
            bad.read()
            conn.request("POST", "/v1/estimate", body=json.dumps(HEADLINE), headers=headers)
            good = conn.getresponse()
            assert good.status == 200 and json.loads(good.read())["peak_phase"]
        conn.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_time_route_refuses_paths_as_the_others_do(model_dir: Path) -> None:
    # POST /v1/time took a path to the catalog's no-disk refusal, whose message says "a path to a config.json
    # also works": it now checks names as every route does
    with file_access_log([str(model_dir)]) as seen:
        r = client.post("/v1/time", json={**HEADLINE, "model": str(model_dir)})
    assert seen == []
    assert r.status_code == 422 and "paths are not accepted" in r.json()["detail"][0]["msg"], r.text
