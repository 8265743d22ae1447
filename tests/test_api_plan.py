"""POST /v1/plan, /v1/plan/max-batch and /v1/plan/min-gpus through FastAPI's TestClient.

Expected answers come from ``memplan.planner`` on the same request: the service must add nothing.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.schemas import HEADLINE, INLINE, REMAX_SETUP
from memplan.planner import KNOBS, LimitReport, batch_limit, gpu_limit, plan
from memplan.report import EstimateRequest

client = TestClient(create_app())


def _same(got: dict, expected) -> None:
    model = type(expected)
    assert model.model_validate(got).model_dump(exclude={"elapsed_ms"}) == expected.model_dump(
        exclude={"elapsed_ms"})


@pytest.mark.parametrize("body", [REMAX_SETUP, {**REMAX_SETUP, "algo": "remax"}, HEADLINE, INLINE])
def test_plan_matches_library(body):
    r = client.post("/v1/plan", json={"request": body})
    assert r.status_code == 200, r.text
    _same(r.json(), plan(EstimateRequest.model_validate(body)))


def test_plan_ppo_headline_names_a_change_that_fits():
    data = client.post("/v1/plan", json={"request": REMAX_SETUP}).json()
    assert data["as_given"]["fits"] is False and data["fits_any"] is True
    best = data["candidates"][0]
    assert best["fits"] and best["changes"] and best["headroom_bytes"] >= 0


def test_plan_allow_and_max_results():
    body = {"request": REMAX_SETUP, "allow": ["offload", "tp"], "max_results": 1}
    r = client.post("/v1/plan", json=body)
    assert r.status_code == 200, r.text
    expected = plan(EstimateRequest.model_validate(REMAX_SETUP), allow={"offload", "tp"}, max_results=1)
    _same(r.json(), expected)
    assert len(r.json()["candidates"]) == 1
    assert set(r.json()["candidates"][0]["changes"]) <= {"offload", "tp"}


def test_max_batch_and_min_gpus():
    request = {**REMAX_SETUP, "algo": "remax", "gpus": "1xA100-80GB", "offload": "optimizer"}
    r = client.post("/v1/plan/max-batch", json={"request": request})
    assert r.status_code == 200, r.text
    expected = batch_limit(EstimateRequest.model_validate(request))
    _same(r.json(), expected)
    assert r.json()["max_micro_batch_size"] == expected.max_micro_batch_size is not None

    r = client.post("/v1/plan/max-batch", json={"request": request, "field": "rollout_batch_size"})
    assert r.status_code == 200, r.text
    _same(r.json(), batch_limit(EstimateRequest.model_validate(request), "rollout_batch_size"))

    r = client.post("/v1/plan/min-gpus", json={"request": REMAX_SETUP})
    assert r.status_code == 200, r.text
    expected = gpu_limit(EstimateRequest.model_validate(REMAX_SETUP))
    _same(r.json(), expected)
    assert LimitReport.model_validate(r.json()).min_gpus == expected.min_gpus


def test_plan_objective_and_data_set():
    body = {"request": REMAX_SETUP, "objective": "cheapest", "dataset_samples": 45000, "price_per_gpu_hour": 2.5}
    r = client.post("/v1/plan", json=body)
    assert r.status_code == 200, r.text
    expected = plan(EstimateRequest.model_validate(REMAX_SETUP), objective="cheapest", dataset_samples=45000,
                    price_per_gpu_hour=2.5)
    _same(r.json(), expected)
    data = r.json()
    assert data["objective"] == "cheapest" and all(c["price"] is not None for c in data["candidates"])
    assert client.post("/v1/plan", json={"request": REMAX_SETUP}).json()["objective"] == "fastest"


def _error(r, status=422):
    assert r.status_code == status, r.text
    return r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/plan", {"request": REMAX_SETUP, "allow": ["bogus"]}, ["body", "allow", 0]),
        ("/v1/plan", {"request": REMAX_SETUP, "max_results": 0}, ["body", "max_results"]),
        ("/v1/plan", {"request": REMAX_SETUP, "max_results": 10**6}, ["body", "max_results"]),
        ("/v1/plan", {"request": REMAX_SETUP, "objective": "slowest"}, ["body", "objective"]),
        ("/v1/plan", {"request": REMAX_SETUP, "dataset_samples": 0}, ["body", "dataset_samples"]),
        ("/v1/plan", {"request": REMAX_SETUP, "price_per_gpu_hour": "2"}, ["body", "price_per_gpu_hour"]),
        ("/v1/plan", {"request": {**REMAX_SETUP, "micro_batch_size": 0}}, ["body", "request", "micro_batch_size"]),
        ("/v1/plan", {"request": {**REMAX_SETUP, "tp": 3}}, ["body", "request", "tp"]),  # InputError, not pydantic
        ("/v1/plan", {"request": {**REMAX_SETUP, "model": "/etc/passwd"}}, ["body", "request", "model"]),
        ("/v1/plan", {"request": {**REMAX_SETUP, "gpus": "8xB999-1GB"}}, ["body", "request", "gpus"]),
        ("/v1/plan", {"request": REMAX_SETUP, "trust_remote_code": True}, ["body", "trust_remote_code"]),
        ("/v1/plan", {**REMAX_SETUP}, ["body", "request"]),  # the request is nested
        ("/v1/plan/max-batch", {"request": REMAX_SETUP, "field": "gpus"}, ["body", "field"]),
        ("/v1/plan/max-batch", {"request": {**REMAX_SETUP, "algo": "dpo"}, "field": "rollout_batch_size"},
         ["body", "request", "algo"]),
        ("/v1/plan/min-gpus", {"request": {**REMAX_SETUP, "critic_model": "no-such"}},
         ["body", "request", "critic_model"]),
        ("/v1/plan/min-gpus", {"request": REMAX_SETUP, "field": "micro_batch_size"}, ["body", "field"]),
    ],
)
def test_bad_input_is_422_with_the_field(path, body, loc):
    detail = _error(client.post(path, json=body))
    assert any(d["loc"][: len(loc)] == loc for d in detail), detail
    assert all(d["msg"] for d in detail)


def test_bad_knob_message_lists_the_knobs():
    detail = _error(client.post("/v1/plan", json={"request": REMAX_SETUP, "allow": ["bogus"]}))
    assert all(k in detail[0]["msg"] for k in KNOBS)


def test_openapi_lists_the_plan_endpoints():
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/plan", "/v1/plan/max-batch", "/v1/plan/min-gpus"):
        assert "post" in paths[path]
        assert paths[path]["post"]["responses"]["200"]
