"""``score_micro_batch_size``: the scoring forwards' own micro batch (verl's ``log_prob_micro_batch_size_per_gpu``,
OpenRLHF's ``micro_rollout_batch_size``), apart from the training micro batch.

Expected numbers: the log-prob path's closed form worked by hand (``logprob_logits_bytes``' docstring: bf16
logits, their fp32 copy and the fp32 log-softmax, (e + 8)·V bytes per position), and traced runs (the tracer
scores in micro batches of the same size, ``memplan.harness.steps.common.score``).
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
from api.main import create_app
from memplan.cli.app import app
from memplan.errors import InputError
from memplan.planner import batch_limit, max_score_micro_batch_size, scored_sequences
from memplan.report import EstimateRequest

LLAMA = dict(model="meta-llama/Llama-2-7b-hf", gpus="8xA100-80GB", zero_stage=3, prompt_len=256, gen_len=256)


def _phase(report, name):
    return next(p for p in report.phases if p.phase == name)


def _logprob_items(report, role):
    return [li for li in _phase(report, "scoring").items
            if li.role == role and li.category == "logits" and li.note.endswith("log-probs")]


def test_scoring_logits_follow_the_scoring_micro_batch():
    # GRPO, 2 prompts × 8 completions = 16 sequences per GPU; scored 8 at a time, trained 2 at a time.
    report = memplan.estimate(algo="grpo", micro_batch_size=2, score_micro_batch_size=8, **LLAMA)
    assert _phase(report, "scoring").activity == "actor old log-probs: log-softmax"
    # by hand: 8 sequences × 256 answer positions × 32,000 vocabulary × (2 bf16 + 4 fp32 copy + 4 log-softmax)
    assert [li.bytes for li in _logprob_items(report, "actor")] == [8 * 256 * 32_000 * 10]


def test_only_the_scoring_phase_changes():
    given = memplan.estimate(algo="ppo", micro_batch_size=2, rollout_batch_size=4, **LLAMA)
    wider = memplan.estimate(algo="ppo", micro_batch_size=2, rollout_batch_size=4, score_micro_batch_size=4, **LLAMA)
    for phase in ("rollout", "actor_update", "critic_update"):
        assert _phase(given, phase).total_bytes == _phase(wider, phase).total_bytes, phase
    # the largest scoring forward is the actor's or reference's log-softmax: (4 − 2) × 256 × 32,000 × 10 more
    assert _phase(wider, "scoring").total_bytes - _phase(given, "scoring").total_bytes == 2 * 256 * 32_000 * 10


def test_default_is_the_micro_batch():
    implicit = memplan.estimate(algo="rloo", micro_batch_size=4, **LLAMA)
    explicit = memplan.estimate(algo="rloo", micro_batch_size=4, score_micro_batch_size=4, **LLAMA)
    assert [p.total_bytes for p in implicit.phases] == [p.total_bytes for p in explicit.phases]


def test_dpo_scores_chosen_and_rejected():
    base = dict(algo="dpo", micro_batch_size=4, seq_len=512, **{k: v for k, v in LLAMA.items() if "len" not in k})
    two = memplan.estimate(score_micro_batch_size=2, **base)
    # reference log-probs of 2 pairs = 4 sequences × 512 positions × 32,000 × 10 bytes
    assert [li.bytes for li in _logprob_items(two, "reference")] == [4 * 512 * 32_000 * 10]


@pytest.mark.parametrize("larger, available", [
    (dict(algo="grpo", micro_batch_size=1, score_micro_batch_size=9), 8),  # 1 prompt × 8 completions
    (dict(algo="dpo", micro_batch_size=2, seq_len=512, score_micro_batch_size=3), 2),  # the step's 2 pairs
])
def test_a_micro_batch_holds_at_most_the_sequences_there_are(larger, available):
    """As the frameworks split a GPU's batch (and the tracer's ``micro_batches``): a larger micro batch
    scores what there is."""
    capped = memplan.estimate(**{**LLAMA, **larger})
    exact = memplan.estimate(**{**LLAMA, **larger, "score_micro_batch_size": available})
    assert [p.total_bytes for p in capped.phases] == [p.total_bytes for p in exact.phases]


def test_hybrid_engine_scores_the_generation_batch_whole():
    with pytest.raises(InputError) as err:
        memplan.estimate(**LLAMA, algo="ppo", rollout_engine="hybrid-engine", score_micro_batch_size=1)
    assert err.value.field == "score_micro_batch_size"
    assert "leave it unset" in str(err.value)


def test_cli_option_and_bad_value():
    runner = CliRunner()
    args = ["estimate", "--model", "meta-llama/Llama-2-7b-hf", "--algo", "grpo", "--gpus", "8xA100-80GB",
            "--zero-stage", "3", "--micro-batch-size", "2"]
    ok = runner.invoke(app, [*args, "--score-micro-batch-size", "8", "--json"])
    assert ok.exit_code == 0, ok.output
    expected = memplan.estimate(algo="grpo", micro_batch_size=2, score_micro_batch_size=8, **LLAMA)
    assert memplan.Report.model_validate_json(ok.stdout).peak_bytes_per_gpu == expected.peak_bytes_per_gpu
    bad = runner.invoke(app, [*args, "--score-micro-batch-size", "0"])
    assert bad.exit_code == 2
    assert "--score-micro-batch-size" in bad.output and "1 ≤ x ≤ 65536" in bad.output
    dschat = runner.invoke(app, [*args, "--score-micro-batch-size", "1", "--rollout-engine", "hybrid-engine"])
    assert dschat.exit_code == 2 and "--score-micro-batch-size" in dschat.output


def test_http_422_names_the_field():
    client = TestClient(create_app())
    body = {"model": "meta-llama/Llama-2-7b-hf", "algo": "grpo", "gpus": "8xA100-80GB", "zero_stage": 3}
    for bad in ({"score_micro_batch_size": 0}, {"score_micro_batch_size": 1, "rollout_engine": "hybrid-engine"}):
        r = client.post("/v1/estimate", json={**body, **bad})
        assert r.status_code == 422, r.text
        assert "score_micro_batch_size" in r.text
    r = client.post("/v1/estimate", json={**body, "score_micro_batch_size": 4})
    assert r.status_code == 200
    assert r.json()["peak_bytes_per_gpu"] == memplan.estimate(
        **body, score_micro_batch_size=4).peak_bytes_per_gpu


def test_tracer_scores_in_the_same_micro_batches():
    """Both tiers on one tiny GRPO step (1 prompt × 4 completions), scored 1 and then 4 at a time: each traced
    phase within the accuracy tolerances, and the scoring peak moves by what the trace says."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.harness import trace
    from memplan.harness.accuracy import compare, table

    traced, estimated = {}, {}
    for size in (1, 4):
        request = EstimateRequest(model="memplan/tiny-llama", algo="grpo", gpus="1xH100-80GB", prompt_len=64,
                                  gen_len=64, micro_batch_size=1, rollout_batch_size=1, group_size=4,
                                  score_micro_batch_size=size)
        rows = compare(f"grpo tiny-llama score {size}", trace(request))
        bad = [(r.phase, name) for r in rows for name in r.over_tolerance()]
        assert not bad, table(rows)
        traced[size] = {r.phase: r.traced_bytes for r in rows}
        estimated[size] = {r.phase: r.estimate_bytes for r in rows}
    rise = traced[4]["scoring"] - traced[1]["scoring"]
    assert rise > 0.1 * traced[1]["scoring"]  # the knob reaches the traced step
    assert estimated[4]["scoring"] - estimated[1]["scoring"] == pytest.approx(rise, rel=0.05)
    assert traced[4]["actor_update"] == traced[1]["actor_update"]


# ------------------------------------------------------------------ the largest scoring micro batch that fits

QWEN_GRPO = dict(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", engine="fsdp", zero_stage=3,
                 gradient_checkpointing=True, rollout_engine="vllm", micro_batch_size=4, rollout_batch_size=16,
                 group_size=8, prompt_len=1024, gen_len=4096)


def test_max_score_batch_is_the_boundary():
    request = EstimateRequest(**QWEN_GRPO)
    n = max_score_micro_batch_size(request, allow_tight=True)  # the point estimate's boundary (TIGHT counts)
    assert n is not None and 1 < n < scored_sequences(request) == 16 * 8
    fits = memplan.estimate(request.model_copy(update={"score_micro_batch_size": n}))
    over = memplan.estimate(request.model_copy(update={"score_micro_batch_size": n + 1}))
    assert fits.fits and not over.fits and over.peak_phase == "scoring"
    # one more sequence adds its log-prob path: 4,096 answer positions × 152,064 vocabulary × 10 bytes
    assert over.peak_bytes_per_gpu - fits.peak_bytes_per_gpu == 4096 * 152_064 * 10
    limit = batch_limit(request, "score_micro_batch_size", allow_tight=True)
    assert limit.max_score_micro_batch_size == n and limit.past_limit is not None and not limit.past_limit.fits


def test_max_score_batch_stops_at_the_sequences_scored():
    small = EstimateRequest(**{**QWEN_GRPO, "rollout_batch_size": 1, "group_size": 4})
    limit = batch_limit(small, "score_micro_batch_size")
    assert limit.max_score_micro_batch_size == 4 and limit.found and limit.past_limit is None


def test_max_score_batch_cli_api_and_bad_algo():
    request = EstimateRequest(**QWEN_GRPO)
    args = ["plan", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus", "8xH100-80GB", "--engine", "fsdp",
            "--zero-stage", "3", "--gradient-checkpointing", "--rollout-engine", "vllm", "--micro-batch-size", "4",
            "--rollout-batch-size", "16", "--group-size", "8", "--prompt-len", "1024", "--gen-len", "4096",
            "--max-score-batch"]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_score_micro_batch_size"] == max_score_micro_batch_size(request)
    sft = CliRunner().invoke(app, [*args[:4], "sft", *args[5:]])
    assert sft.exit_code == 2 and "--algo" in sft.output and "no scoring phase" in sft.output

    client = TestClient(create_app())
    body = {"request": request.model_dump(mode="json", exclude_defaults=True), "field": "score_micro_batch_size"}
    r = client.post("/v1/plan/max-batch", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["max_score_micro_batch_size"] == max_score_micro_batch_size(request)
    r = client.post("/v1/plan/max-batch", json={**body, "request": {**body["request"], "algo": "sft"}})
    assert r.status_code == 422 and "no scoring phase" in r.text


def test_plan_halves_a_given_scoring_micro_batch_first():
    """The cheapest fix of a run whose scoring phase overflows: a smaller scoring micro batch (every other
    knob costs throughput first), found among its halvings; the planner's answer is re-checked here."""
    from memplan.planner import KNOBS, plan

    request = EstimateRequest(**{**QWEN_GRPO, "score_micro_batch_size": 32})
    given = memplan.estimate(request)
    assert not given.fits and given.peak_phase == "scoring"
    result = plan(request, allow=set(KNOBS) - {"logprob_kernel"}, allow_tight=True)  # a fused kernel would do: test_logprob_kernel
    best = result.candidates[0]
    assert best.changes == {"score_micro_batch_size": (32, 8)}
    assert memplan.estimate(best.request).fits
    assert not memplan.estimate(request.model_copy(update={"score_micro_batch_size": 16})).fits
    assert "score_micro_batch_size" in result.knobs
    others = plan(request, allow={"zero_stage", "offload", "tp"}, allow_tight=True)
    assert all("score_micro_batch_size" not in c.changes for c in others.candidates)
