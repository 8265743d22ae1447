"""The planner's time questions (issue 18): ``--min-gpus`` within a time budget, and what ``--objective
fewest-gpus`` does. The wall times are ``memplan.step_time``'s (tests/test_timing.py works its terms by hand)."""

from __future__ import annotations

import pytest

from memplan.cli.plan import parse_duration
from memplan.errors import InputError
from memplan.planner import gpu_limit, plan
from memplan.report import EstimateRequest
from memplan.timing import step_time

REMAX = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="remax", gpus="1xA100-80GB", micro_batch_size=40,
                        offload="optimizer", rollout_engine="hybrid-engine", attention="eager",
                        gradient_checkpointing=True)
SAMPLES = 45_000  # the ReMax README's data set: 45k prompts, one epoch


def test_min_gpus_within_a_time_budget():
    # by the point estimate (allow_tight): two A100-80GB hold it (one: 88 GiB in scoring); with the training band
    # (+32 %, extrapolated for DeepSpeed on several GPUs) two and four are TIGHT and eight FITS
    assert gpu_limit(REMAX, allow_tight=True).min_gpus == 2
    assert gpu_limit(REMAX).min_gpus == 8
    result = gpu_limit(REMAX, time_budget_seconds=3 * 3600, dataset_samples=SAMPLES, allow_tight=True)
    assert result.min_gpus == 4 and result.time_budget_seconds == 10_800
    at, past = result.at_limit, result.past_limit
    # 4 GPUs: 45,000 / (40 prompts × 4 GPUs) = 281.25 → 282 steps of step_time's seconds each
    four = step_time(REMAX, gpus="4xA100-80GB")
    assert at.wall_seconds == pytest.approx(282 * four.seconds_per_step) and at.wall_seconds <= 10_800
    # 2 GPUs: 45,000 / 80 = 562.5 → 563 steps, ~2× the wall time: over the budget although it fits
    two = step_time(REMAX, gpus="2xA100-80GB")
    assert past.num_gpus == 2 and past.fits and past.wall_seconds == pytest.approx(563 * two.seconds_per_step)
    assert past.wall_seconds > 10_800


def test_a_budget_nothing_meets_is_not_found():
    result = gpu_limit(REMAX, time_budget_seconds=1.0, dataset_samples=SAMPLES)
    assert result.min_gpus is None and not result.found


def test_time_budget_needs_the_data_set_and_a_positive_duration():
    with pytest.raises(InputError, match="dataset_samples"):
        gpu_limit(REMAX, time_budget_seconds=3600)
    with pytest.raises(InputError, match="time_budget"):
        gpu_limit(REMAX, time_budget_seconds=0, dataset_samples=SAMPLES)


@pytest.mark.parametrize(("text", "seconds"), [("6h", 21_600), ("90m", 5_400), ("90 min", 5_400), ("3600s", 3_600),
                                               ("2d", 172_800), ("1.5h", 5_400), ("3600", 3_600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "0", "six hours", "nan", "1e12"])
def test_parse_duration_rejects(text):
    with pytest.raises(InputError, match="time_budget"):
        parse_duration(text)


def test_cli_min_gpus_time_budget():
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from memplan.cli.app import app

    base = ["plan", "--model", "meta-llama/Llama-2-7b-hf", "--algo", "remax", "--gpus", "1xA100-80GB",
            "--micro-batch-size", "40", "--offload", "optimizer", "--rollout-engine", "hybrid-engine",
            "--attention", "eager", "--gradient-checkpointing"]
    result = CliRunner().invoke(app, [*base, "--min-gpus", "--dataset-samples", "45000", "--time-budget", "3h",
                                      "--allow-tight"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "finish within 3.00 h (estimated): 4" in result.output
    assert CliRunner().invoke(app, [*base, "--time-budget", "3h"]).exit_code == 2  # only with --min-gpus
    assert CliRunner().invoke(app, [*base, "--min-gpus", "--time-budget", "soon"]).exit_code == 2


def test_api_min_gpus_time_budget():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from api.main import app

    client = TestClient(app)
    request = REMAX.model_dump(exclude_unset=True)
    body = {"request": request, "time_budget_seconds": 10_800, "dataset_samples": SAMPLES, "allow_tight": True}
    response = client.post("/v1/plan/min-gpus", json=body)
    assert response.status_code == 200 and response.json()["min_gpus"] == 4
    assert client.post("/v1/plan/min-gpus", json={"request": request, "allow_tight": True}).json()["min_gpus"] == 2
    assert client.post("/v1/plan/min-gpus", json={"request": request}).json()["min_gpus"] == 8
    for bad in ({"time_budget_seconds": 10_800}, {**body, "time_budget_seconds": 0}):
        response = client.post("/v1/plan/min-gpus", json={"request": request, **bad})
        assert response.status_code == 422


def test_fewest_gpus_searches_the_gpu_count():
    """fewest-gpus runs the knob search at the fewest GPUs (at most the request's) where an allowed configuration
    fits: there it fits, one count below nothing does, and the candidates carry the GPU change."""
    request = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-80GB", micro_batch_size=8)
    allow = {"zero_stage", "gradient_checkpointing"}  # with checkpointing ~112 GiB per GPU on 2 GPUs, ~59 on 4
    fewest = plan(request, allow=allow, objective="fewest-gpus", max_results=5)
    n = fewest.candidates[0].num_gpus
    assert fewest.fits_any and fewest.objective == "fewest-gpus" and 1 < n < 8
    assert {c.num_gpus for c in fewest.candidates} == {n}
    assert all(c.changes["gpus"] == ("8xA100-80GB", f"{n}xA100-80GB") for c in fewest.candidates)
    below = {4: 2, 2: 1}[n]
    assert not plan(request.model_copy(update={"gpus": f"{below}xA100-80GB"}), allow=allow).fits_any
    assert plan(request.model_copy(update={"gpus": f"{n}xA100-80GB"}), allow=allow).fits_any
    assert fewest.as_given.num_gpus == 8 and "fewest" in fewest.notes[-1]
    # within that count, the order is fastest's
    at_n = plan(request.model_copy(update={"gpus": f"{n}xA100-80GB"}), allow=allow, max_results=5)
    assert [c.request for c in fewest.candidates] == [c.request for c in at_n.candidates]
