"""Measured phase splits of DeepSpeed-Chat PPO steps against memplan.timing's phases (issue 18).

Two public runs print where each step's time went (benchmarks/corpus/timing/public_runs.jsonl, records with
``measured_phase_seconds``); each timer is read from the source that printed it, so memplan's phases are summed
the same way before they are compared (±25 %, as the step times of tests/test_timing.py):

* ``deepspeed-hybrid-engine`` — DeepSpeed's ``HybridEngine.eval()`` line (deepspeed/runtime/hybrid_engine.py, v0.9.0
  and @38327e0): Generate time = ``generate()`` minus its ZeRO-3 gather; Training time runs from the actor's
  ``train()`` right after generation to its ``step()`` — DeepSpeed-Chat (ppo_trainer.py @3a77097a) scores with the
  actor, reference, reward and critic in that window, then trains the actor; Others = the rest, the critic's
  forward + backward + step coming after the actor's step. The train↔inference switch runs inside ``eval()``,
  before the next step's clock starts: in none of them.
* ``dschat-fork-print-throughput`` — the OpenRLHF authors' DeepSpeed-Chat fork (wuxibin89/DeepSpeedExamples
  @4aef224, ppo_trainer.py / main.py): generation = the ``generate()`` call (the ZeRO-3 gather included, the
  switch in ``self.eval()`` before it not), preparation = the scoring forwards after it, training = the PPO loop
  (actor and critic).

Known gaps are pinned with their direction, as tests/test_timing.py pins the step times: a change that moves one
shows here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memplan.catalog import get_model
from memplan.report import EstimateRequest
from memplan.timing import StepTime, formulas, launches, step_time
from memplan.timing.hardware import DECODE_HBM_EFFICIENCY, MATMUL_EFFICIENCY, get_perf

CORPUS = Path(__file__).resolve().parent.parent / "benchmarks" / "corpus" / "timing" / "public_runs.jsonl"
RECORDS = {r["id"]: r for r in map(json.loads, CORPUS.read_text(encoding="utf-8").splitlines())
           if "measured_phase_seconds" in r}
OPT_LOG = "dschat-log/opt-1.3b-critic-350m-16xV100-32GB"
LLAMA_A800 = "openrlhf-paper/dschat-llama2-7b-16xA800-80GB-phase-split"
TOLERANCE = 0.25


def _rollout_generate(result: StepTime) -> float:
    """The rollout blocks inside ``generate()``: prefill, decode and, under ZeRO-3, the gather (not the switch)."""
    return sum(i.seconds for p in result.phases if p.phase == "rollout" for i in p.items if "switch" not in i.what)


def _phase(result: StepTime, *names: str) -> float:
    return sum(p.seconds for p in result.phases if p.phase in names)


def _gather(result: StepTime) -> float:
    return sum(i.seconds for p in result.phases if p.phase == "rollout" for i in p.items if "gather" in i.what)


def estimated_split(record: dict) -> dict[str, float]:
    """memplan's seconds for each of the record's timers, over the record's measured step (its prompts)."""
    result = step_time(EstimateRequest(**record["request"]))
    scale = record["measured_step_prompts"] / result.prompts_per_step
    if record["phase_timer"] == "deepspeed-hybrid-engine":
        split = {"generation": _rollout_generate(result) - _gather(result),
                 "training": _phase(result, "scoring", "actor_update"), "others": _phase(result, "critic_update")}
    elif record["phase_timer"] == "dschat-fork-print-throughput":
        split = {"generation": _rollout_generate(result), "preparation": _phase(result, "scoring"),
                 "training": _phase(result, "actor_update", "critic_update")}
    else:
        raise AssertionError(f"unknown phase_timer {record['phase_timer']!r}")
    return {k: v * scale for k, v in split.items()}


def _ratio(record_id: str, phase: str) -> float:
    record = RECORDS[record_id]
    return estimated_split(record)[phase] / record["measured_phase_seconds"][phase]


WITHIN = ((OPT_LOG, "generation"), (LLAMA_A800, "training"))
UNDER = "under"
GAPS = {  # (record, phase): direction, estimated / measured, why
    (OPT_LOG, "training"): (UNDER, "0.50: four scoring forwards and the actor's update at 512 tokens × 4 on a V100; "
                            "memplan's 50 % of the fp16 peak is unsourced for V100 (fp16 eager, 2017 tensor cores)"),
    (OPT_LOG, "others"): (UNDER, "0.32: the critic's update (OPT-350M), plus the EMA copy and the train() switch "
                          "memplan does not count"),
    (LLAMA_A800, "generation"): (UNDER, "0.38 (0.23 before the ZeRO-3 weight merges were counted): 72 ms a token "
                                 "measured at batch 8, 26 ms here (HBM: weights, KV and the merges)"),
    (LLAMA_A800, "preparation"): (UNDER, "0.34: four ZeRO-3 forwards over 8 × 2048 tokens, gathers across two "
                                  "nodes in 60 MB prefetch buckets (stage3_prefetch_bucket_size 3e7), not modeled"),
}


def test_every_timer_of_every_record_is_pinned():
    assert set(RECORDS) == {OPT_LOG, LLAMA_A800}
    for record_id, record in RECORDS.items():
        phases = set(record["measured_phase_seconds"]) - {"step"}
        assert {(record_id, p) for p in phases} == {k for k in (*WITHIN, *GAPS) if k[0] == record_id}
        # the timers add up to the measured step (the hybrid engine's Others is its remainder; the fork's E2E is
        # training + (generation + preparation) × generation batches)
        assert sum(record["measured_phase_seconds"][p] for p in phases) == pytest.approx(
            record["measured_phase_seconds"]["step"], abs=0.01)
        assert record["source"]["url"].startswith("https://") and record["assumptions"]


@pytest.mark.parametrize("record_id, phase", WITHIN)
def test_measured_phase_within_tolerance(record_id, phase):
    assert _ratio(record_id, phase) == pytest.approx(1.0, abs=TOLERANCE)


@pytest.mark.parametrize("record_id, phase", sorted(GAPS))
def test_known_phase_gaps_keep_their_direction(record_id, phase):
    assert GAPS[(record_id, phase)][0] == UNDER
    assert _ratio(record_id, phase) < 1 - TOLERANCE


def test_where_the_missing_ppo_time_sits():
    """The 7B PPO run (actor and 7B critic): training — both models' forward, backward, recompute and offloaded
    steps — is within ±25 %; what memplan misses is in generation (590 s measured) and in the scoring forwards."""
    record = RECORDS[LLAMA_A800]
    estimated, measured = estimated_split(record), record["measured_phase_seconds"]
    missing = {p: measured[p] - estimated[p] for p in estimated}
    assert missing["generation"] > 3 * abs(missing["training"])
    assert missing["preparation"] > 3 * abs(missing["training"])
    assert missing["generation"] / sum(missing.values()) > 0.6


# ------------------------------------------------------------------------------------ terms by hand


def test_zero3_merge_bytes_by_hand():
    # Llama-2-7B: q, k, v rows (32 + 2·32)·128 = 12,288 × h 4,096 = 50,331,648; up and gate 2 · 11,008 · 4,096 =
    # 90,177,536; read + write, 2 bytes, 32 layers: 140,509,184 · 2 · 2 · 32 = 17,985,175,552 bytes a token
    llama = get_model("meta-llama/Llama-2-7b-hf")
    assert launches.hybrid_engine_merge_bytes(llama, 2, zero3=True) == 17_985_175_552
    assert launches.hybrid_engine_merge_bytes(llama, 2, zero3=True, tp=2) == 17_985_175_552 // 2
    assert launches.hybrid_engine_merge_bytes(llama, 2, zero3=False) == 0
    # OPT-6.7B: q, k, v 50,331,648 + their biases 12,288 (no gated MLP, no up/gate merge): × 2 · 2 · 32
    opt = get_model("facebook/opt-6.7b")
    assert launches.hybrid_engine_merge_bytes(opt, 2, zero3=True) == (50_331_648 + 12_288) * 4 * 32
    # a family without a hybrid container here merges nothing
    assert launches.hybrid_engine_merge_bytes(get_model("Qwen/Qwen2.5-7B"), 2, zero3=True) == 0


def test_llama_zero3_decode_by_hand():
    """The A800 record's decode, one generation batch of 8: per token the weights (6,738,415,616 · 2 B), the KV
    cache at the mean context 1024 + 512 (8 · 1,536 · 524,288 B) and the merges (17,985,175,552 B), at
    2,039e9 · 0.71 B/s: 37,904,457,728 / 1.4477e12 = 26.18 ms (the launch floor, 32 · 20 kernels · 24.0 µs =
    15.4 ms, is under it); 1,024 tokens: 26.81 s."""
    result = step_time(EstimateRequest(**RECORDS[LLAMA_A800]["request"]))
    decode = next(i for p in result.phases for i in p.items if "decode" in i.what)
    per_token = (6_738_415_616 * 2 + 8 * 1536 * 524_288 + 17_985_175_552) / (2039e9 * DECODE_HBM_EFFICIENCY)
    assert per_token == pytest.approx(26.18e-3, rel=1e-3)
    assert decode.bound == "hbm" and decode.seconds == pytest.approx(1024 * per_token)
    assert "ZeRO-3 weight merges" in decode.what
    assert launches.decode_launch_seconds("hybrid-engine", "llama", 32, zero3=True) == pytest.approx(
        32 * 20 * launches.SECONDS_PER_LAUNCH)


def test_zero2_and_other_engines_merge_nothing():
    """The ReMax README's runs (actor ZeRO-2) and HF / vLLM generation keep their decode: no merge bytes."""
    base = dict(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="4xA100-80GB", micro_batch_size=8,
                gradient_checkpointing=True)
    zero2 = step_time(EstimateRequest(**base, actor_zero_stage=2, rollout_engine="hybrid-engine"))
    assert not any("merges" in i.what for p in zero2.phases for i in p.items)
    hf = step_time(EstimateRequest(**base, actor_zero_stage=3, rollout_engine="hf", gather_for_generation=True))
    assert not any("merges" in i.what for p in hf.phases for i in p.items)


def test_opt_log_generation_by_hand():
    """The OPT-1.3B log's Generate time (2.55 s measured): prefill 256 tokens × 4 at 125e12 · 0.5 FLOP/s (fp16 on
    V100) plus 256 decode steps, each bound by launching 24 layers × 14 fused kernels × 24.0 µs = 8.07 ms (reading
    2.63 GB of weights at 900e9 · 0.71 takes 4.1 ms): 0.044 + 2.067 = 2.111 s, ratio 0.83."""
    record = RECORDS[OPT_LOG]
    spec = get_model("facebook/opt-1.3b")
    prefill = formulas.forward_flops(spec, True, 256, 4) / (125e12 * MATMUL_EFFICIENCY)
    decode = 256 * 24 * 14 * launches.SECONDS_PER_LAUNCH
    v100 = get_perf("V100-32GB")
    assert spec.num_params * 2 / (v100.hbm_bytes_per_s * DECODE_HBM_EFFICIENCY) < 24 * 14 * launches.SECONDS_PER_LAUNCH
    assert estimated_split(record)["generation"] == pytest.approx(prefill + decode, rel=1e-6)
    assert prefill + decode == pytest.approx(2.111, rel=2e-3)
    assert _ratio(OPT_LOG, "generation") == pytest.approx(0.83, abs=0.01)
