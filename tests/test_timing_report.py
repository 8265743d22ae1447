"""The time in the estimate report (issue 18): ``memplan estimate`` prints the time rows of ``step_time``, and
POST /v1/estimate adds ``time`` on ``?time=true`` only (the default report stays the cached estimate)."""

from __future__ import annotations

import pytest

from memplan.report import EstimateRequest
from memplan.timing import step_time

SETUP = dict(model="meta-llama/Llama-2-7b-hf", algo="remax", gpus="4xA100-80GB", actor_zero_stage=2,
             ref_zero_stage=3, reward_zero_stage=3, offload_ref=True, offload_reward=True, gradient_checkpointing=True,
             rollout_engine="hybrid-engine", attention="eager", offload="optimizer", micro_batch_size=40)


def test_cli_estimate_shows_time_per_phase():
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from memplan.cli.app import app

    args = ["estimate", "--model", SETUP["model"], "--algo", "remax", "--gpus", "4xA100-80GB", "--micro-batch-size",
            "40", "--offload", "optimizer", "--rollout-engine", "hybrid-engine", "--attention", "eager"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Time per step (estimated, 4× A100-80GB)" in result.output
    expected = step_time(EstimateRequest(model=SETUP["model"], algo="remax", gpus="4xA100-80GB", micro_batch_size=40,
                                         offload="optimizer", rollout_engine="hybrid-engine", attention="eager"))
    row = next(line for line in result.output.splitlines() if "│ step" in line)
    assert f"{expected.seconds_per_step:.1f}" in row
    for phase in expected.phases:
        assert f"│ {phase.phase}" in result.output


def test_api_estimate_time_only_when_asked():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from api.main import app

    client = TestClient(app)
    plain = client.post("/v1/estimate", json=SETUP)
    assert plain.status_code == 200 and "time" not in plain.json()
    timed = client.post("/v1/estimate?time=true", json=SETUP)
    assert timed.status_code == 200
    body = timed.json()
    expected = step_time(EstimateRequest(**SETUP))
    assert body["time"]["seconds_per_step"] == pytest.approx(expected.seconds_per_step)
    assert [p["phase"] for p in body["time"]["phases"]] == ["rollout", "scoring", "actor_update"]
    assert {k: v for k, v in body.items() if k != "time"} == plain.json()  # the same report beside it
