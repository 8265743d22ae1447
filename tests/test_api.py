"""The REST service through FastAPI's TestClient: every endpoint, good and bad input, limits, imports.

Expected reports come from ``memplan.estimate`` on the same request: the service must add nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import get_args

import pytest
from fastapi.testclient import TestClient

import memplan
from api.deps import catalog_names
from api.main import create_app
from api.schemas import HEADLINE, INLINE, REMAX_SETUP
from memplan import catalog
from memplan.report import Algo, EstimateRequest, Report

client = TestClient(create_app())


def test_healthz():
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


@pytest.mark.parametrize("body", [HEADLINE, REMAX_SETUP, {**REMAX_SETUP, "algo": "remax"}, INLINE])
def test_estimate_matches_library(body):
    r = client.post("/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    assert Report.model_validate(r.json()) == memplan.estimate(EstimateRequest.model_validate(body))


def test_estimate_cached_answer_is_the_same():
    first = client.post("/v1/estimate", json=HEADLINE).content
    assert client.post("/v1/estimate", json=HEADLINE).content == first
    alias = client.post("/v1/estimate", json={**HEADLINE, "micro_batch_size": 2}).json()
    assert alias["request"]["micro_batch_size"] == 2


def _error(r, status=422):
    assert r.status_code == status, r.text
    return r.json()["detail"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"model": "no-such/model-xyz"}, ["body", "model"]),
        ({"critic_model": "no-such-critic"}, ["body", "critic_model"]),
        ({"micro_batch_size": -1}, ["body", "micro_batch_size"]),
        ({"prompt_len": 10**9}, ["body", "prompt_len"]),
        ({"zero_stage": 7}, ["body", "zero_stage"]),
        ({"algo": "a2c"}, ["body", "algo"]),
        ({"gpus": "0xA100-40GB"}, ["body", "gpus"]),
        ({"gpus": "8xB999-1GB"}, ["body", "gpus"]),
        ({"trust_remote_code": True}, ["body", "trust_remote_code"]),  # extra="forbid"
    ],
)
def test_estimate_bad_input_is_422_with_the_field(change, loc):
    detail = _error(client.post("/v1/estimate", json={**HEADLINE, **change}))
    assert any(d["loc"][: len(loc)] == loc for d in detail), detail
    assert all(d["msg"] for d in detail)


@pytest.mark.parametrize(
    "field", ["num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size", "num_attention_heads"]
)
@pytest.mark.parametrize("value", [10**12, 0, -5])
def test_inline_architecture_is_bounded(field, value):
    body = {**INLINE, "model": {**INLINE["model"], field: value}}
    detail = _error(client.post("/v1/estimate", json=body))
    assert any(field in d["loc"] for d in detail), detail
    # the message names the bound, e.g. "Input should be less than or equal to 1024"
    assert any("greater than" in d["msg"] or "less than" in d["msg"] for d in detail)


def test_cache_tells_apart_equal_inline_architectures_with_different_set_fields():
    """GPT-2 ties its LM head by default: an unset tie_word_embeddings and an explicit False compare equal as
    ArchConfig values but are different models (the untied one has V·h more parameters) — the response
    cache must not hand the first one's report to the second."""
    arch = {"model_type": "gpt2", "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 1000}
    body = {"algo": "sft", "gpus": "1xA100-80GB"}
    tied = client.post("/v1/estimate", json={**body, "model": arch}).json()
    untied = client.post("/v1/estimate", json={**body, "model": {**arch, "tie_word_embeddings": False}}).json()
    assert untied["models"][0]["num_params"] - tied["models"][0]["num_params"] == 1000 * 256


@pytest.mark.parametrize(
    "name", ["./config.json", "../models/llama", "~/llama/config.json", "/etc/passwd", "/", "some/folder",
             "..\\windows\\config.json", "meta-llama/../../etc/passwd"],
)
def test_paths_are_refused(name, monkeypatch):
    import builtins
    import io
    import pathlib

    catalog_names()  # the catalog's own files are read once, before the trap is set

    def no_files(*args, **kwargs):
        raise AssertionError(f"the service touched a file: {args}")

    for owner, attr in [(builtins, "open"), (io, "open"), (pathlib.Path, "open"), (pathlib.Path, "read_text"),
                        (pathlib.Path, "read_bytes"), (pathlib.Path, "exists"), (pathlib.Path, "is_file"),
                        (pathlib.Path, "is_dir")]:
        monkeypatch.setattr(owner, attr, no_files)
    detail = _error(client.post("/v1/estimate", json={**HEADLINE, "model": name}))
    assert detail[0]["loc"] == ["body", "model"]


def test_catalog_alias_accepted():
    entry = next(m for m in catalog.list_models() if m.aliases)
    r = client.post("/v1/estimate", json={**HEADLINE, "model": entry.aliases[0]})
    assert r.status_code == 200, r.text


def test_malformed_json():
    r = client.post("/v1/estimate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_undecodable_body_is_422():
    r = client.post("/v1/estimate", content=b"\x80\x81", headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text


def test_unknown_route_and_method():
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/estimate").status_code == 405


def test_body_limit_declared():
    big = b'{"model": "' + b"x" * (65 * 1024) + b'"}'
    r = client.post("/v1/estimate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_body_limit_streamed():
    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        yield b'{"model": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/v1/estimate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_compare_both_forms():
    expected = memplan.compare([EstimateRequest(**{**REMAX_SETUP, "algo": a}) for a in ("ppo", "remax")])
    r = client.post("/v1/compare", json={"base": REMAX_SETUP, "algos": ["ppo", "remax"]})
    assert r.status_code == 200, r.text
    assert [Report.model_validate(x) for x in r.json()] == expected
    r = client.post("/v1/compare", json={"requests": [{**REMAX_SETUP, "algo": a} for a in ("ppo", "remax")]})
    assert r.status_code == 200, r.text
    assert [Report.model_validate(x) for x in r.json()] == expected


def test_compare_rows_carry_step_time_and_speed_vs_ppo():
    r = client.post("/v1/compare", json={"base": REMAX_SETUP, "algos": ["remax"]})
    assert r.status_code == 200, r.text
    (row,) = r.json()
    remax = memplan.step_time(EstimateRequest(**{**REMAX_SETUP, "algo": "remax"}))
    ppo = memplan.step_time(EstimateRequest(**{**REMAX_SETUP, "algo": "ppo"}))  # PPO with the same knobs
    assert row["step_time"]["seconds_per_step"] == remax.seconds_per_step
    expected = (ppo.seconds_per_step / ppo.prompts_per_step) / (remax.seconds_per_step / remax.prompts_per_step)
    assert row["speed_vs_ppo"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"base": HEADLINE, "algos": []},  # base alone compares the default list (test_presets.py)
        {"algos": ["ppo"]},
        {"requests": [HEADLINE], "base": HEADLINE, "algos": ["ppo"]},
        {"requests": []},
        {"requests": [HEADLINE] * 17},
        {"base": HEADLINE, "algos": ["a2c"]},
        {"requests": [{**HEADLINE, "model": "/etc/passwd"}]},
    ],
)
def test_compare_bad_input(body):
    _error(client.post("/v1/compare", json=body))


def test_models_and_gpus():
    models = client.get("/v1/models").json()
    assert [(m["name"], m["num_params"]) for m in models] == [(m.name, m.num_params) for m in catalog.list_models(fixtures=False)]
    gpus = client.get("/v1/gpus").json()
    assert [(g["name"], g["memory_bytes"]) for g in gpus] == [(g.name, g.memory_bytes) for g in catalog.list_gpus()]


def test_algorithms_match_the_estimator():
    algos = client.get("/v1/algorithms").json()
    assert [a["name"] for a in algos] == list(get_args(Algo))
    for a in algos:
        report = memplan.estimate(model="meta-llama/Llama-2-7b-hf", algo=a["name"], gpus="8xA100-40GB")
        assert sorted(a["resident_models"]) == sorted(m.role for m in report.models), a["name"]
        assert a["description"]


def test_openapi_headline_example_first():
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/estimate"]["post"]["requestBody"]["content"]["application/json"]
    first = next(iter(body["examples"].values()))
    assert first["value"] == {"model": "meta-llama/Llama-2-7b-hf", "algo": "ppo", "gpus": "8xA100-40GB"}
    for path in ("/v1/estimate", "/v1/compare", "/v1/models", "/v1/gpus", "/v1/algorithms", "/healthz"):
        assert path in schema["paths"]


def test_api_imports_no_torch_and_starts_fast():
    code = (
        "import time, sys\n"
        "t = time.perf_counter()\n"
        "import api.main\n"
        "print(time.perf_counter() - t)\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'transformers' not in sys.modules\n"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 2.0  # ~0.6 s here (FastAPI's own import dominates)
    assert time.perf_counter() - start < 10


def test_overlong_model_name_is_422():
    r = client.post("/v1/estimate", json={"model": "x" * 5000, "gpus": "8xA100-40GB"})
    # the model's form (a name, not an architecture) in the path: one error, of the form that was given
    assert r.status_code == 422 and [d["loc"] for d in r.json()["detail"]] == [["body", "model", "name"]]
