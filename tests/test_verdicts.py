"""Verdicts that were wrong (issue 15, items 6–11): vLLM's KV cache, one verdict with the host RAM, GPUs per
node, ambiguous GPU names, knobs a framework cannot apply, and options that contradict the run.

Every number is worked by hand beside it from the models' config.json (catalog) and the GPUs' capacities
(gpus.json); vLLM's rules are read from its source (``memplan.estimator.algorithms.vllm_pool``).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
from api.main import create_app
from memplan.catalog import get_gpu, get_model, list_gpus, parse_cluster
from memplan.cli.app import app
from memplan.errors import InputError, UnknownGPUError
from memplan.estimator.algorithms import VLLM_PROFILE_TOKENS, vllm_pool
from memplan.estimator.resolve import resolve
from memplan.planner import gpu_limit, min_gpus, plan
from memplan.report import EstimateRequest
from memplan.units import GiB

# ------------------------------------------------------------------ 6. vLLM's reservation and its KV cache

# Qwen2.5-32B (config.json): h 5120, f 27648, 64 layers, 40 heads, 8 KV heads of 128, vocabulary 152064, untied.
# Parameters: embeddings and LM head 2 × 152064·5120 = 1,557,135,360; per layer q 5120² + 5120 = 26,219,520,
# k and v 5120·1024 + 1024 = 5,243,904 each, o 5120² = 26,214,400, MLP 3·5120·27648 = 424,673,280, norms 10,240:
# 487,605,248 × 64 = 31,206,735,872; + the final norm 5120 → 32,763,876,352.
QWEN32_PARAMS = 32_763_876_352
QWEN32_WEIGHTS = 2 * QWEN32_PARAMS  # bf16: 65,527,752,704 bytes (61.03 GiB)
# vLLM's profile run: one layer's intermediates over 8192 tokens, 3·e·f + 2·e·h + 4h = 165,888 + 20,480 + 20,480
# = 206,848 bytes per token → 1,694,498,816 bytes (1.58 GiB)
QWEN32_PROFILE = 8192 * (3 * 2 * 27648 + 2 * 2 * 5120 + 4 * 5120)
# one sequence of 256 + 256 tokens (32 blocks of 16): 2 (K, V) · 64 layers · 8 heads · 128 · 2 bytes = 262,144
# bytes per token → 134,217,728 bytes
QWEN32_SEQ = 512 * 2 * 64 * 8 * 128 * 2
A100_80 = 84_987_084_800  # torch total_memory of an A100-SXM4-80GB (gpus.json)

QWEN32_GRPO = dict(model="Qwen/Qwen2.5-32B", algo="grpo", gpus="8xA100-80GB", engine="fsdp", zero_stage=3,
                   gradient_checkpointing=True, rollout_engine="vllm")


def test_qwen32_count_and_profile_constants():
    assert get_model("Qwen/Qwen2.5-32B").num_params == QWEN32_PARAMS
    assert VLLM_PROFILE_TOKENS == 8192


def test_vllm_reservation_below_its_weights_does_not_fit():
    # 0.3 × 84,987,084,800 = 25,496,125,440 bytes (23.75 GiB) for 61.03 GiB of weights: no KV cache at all
    report = memplan.estimate(**QWEN32_GRPO, vllm_gpu_memory_utilization=0.3)
    run = resolve(report.request)
    pool = vllm_pool(run, run.roles[0])
    assert pool.reserved == int(0.3 * A100_80) == 25_496_125_440
    assert (pool.weights, pool.activations) == (QWEN32_WEIGHTS, QWEN32_PROFILE)
    assert pool.kv_cache == 25_496_125_440 - QWEN32_WEIGHTS - QWEN32_PROFILE < 0
    assert not report.fits
    assert any(r.startswith("vLLM cannot start") and "No available memory for the cache blocks" in r
               for r in report.reasons), report.reasons


def test_vllm_kv_cache_holds_fewer_sequences_than_the_rollout():
    # 0.8 × 84,987,084,800 = 67,989,667,840; − 65,527,752,704 − 1,694,498,816 = 767,416,320 bytes of KV cache:
    # 767,416,320 // 134,217,728 = 5 sequences, fewer than the 8 of one prompt × group 8 (one engine, TP 1)
    report = memplan.estimate(**QWEN32_GRPO, vllm_gpu_memory_utilization=0.8)
    run = resolve(report.request)
    pool = vllm_pool(run, run.roles[0])
    assert pool.kv_cache == 67_989_667_840 - QWEN32_WEIGHTS - QWEN32_PROFILE == 767_416_320
    assert (pool.per_sequence, pool.sequences, pool.wanted) == (QWEN32_SEQ, 5, 8)
    assert not any(r.startswith("vLLM") for r in report.reasons)
    assert any("holds 5 sequences of 512 tokens, fewer than the 8" in note for note in report.notes), report.notes


def test_vllm_kv_cache_below_one_sequence_does_not_fit():
    # prompt 2048 + answer 4096 = 6144 tokens × 262,144 = 1,610,612,736 bytes > the 767,416,320 left at 0.8
    report = memplan.estimate(**QWEN32_GRPO, vllm_gpu_memory_utilization=0.8, prompt_len=2048, gen_len=4096)
    assert not report.fits
    assert any("less than one sequence of 6144 tokens" in r for r in report.reasons), report.reasons


def test_plan_never_proposes_a_fraction_vllm_cannot_start_at():
    # vLLM starts from 65,527,752,704 + 1,694,498,816 + 134,217,728 = 67,356,469,248 bytes = 0.7926 of the GPU:
    # of the planner's fractions (0.9 … 0.2) none below the given 0.8 (the plan offered 0.8 → 0.3)
    start = (QWEN32_WEIGHTS + QWEN32_PROFILE + QWEN32_SEQ) / A100_80
    assert 0.79 < start < 0.8
    report = plan(EstimateRequest(**QWEN32_GRPO, vllm_gpu_memory_utilization=0.8))
    assert report.candidates
    for c in report.candidates:
        assert c.request.vllm_gpu_memory_utilization >= start
        assert c.fits == memplan.estimate(c.request).fits
    # given a fraction too small to start, the plan raises it to the only one that starts (0.9)
    low = plan(EstimateRequest(**QWEN32_GRPO, vllm_gpu_memory_utilization=0.3))
    assert all(c.request.vllm_gpu_memory_utilization == 0.9 for c in low.candidates if c.fits)


# Llama-3.1-70B: 70,553,706,496 parameters (transformers' count, catalog test) → 141.1 GB of bf16 weights, more than
# a whole H100's 85,520,809,984 bytes: one vLLM engine per GPU (TP 1) cannot hold them at any fraction
LLAMA70_GRPO = dict(model="meta-llama/Llama-3.1-70B", algo="grpo", gpus="3x8xH100-80GB", engine="fsdp",
                    zero_stage=3, gradient_checkpointing=True, rollout_engine="vllm",
                    vllm_gpu_memory_utilization=0.9)


def test_llama70_vllm_at_tp1_fits_nowhere():
    report = memplan.estimate(**LLAMA70_GRPO)
    assert 2 * get_model("meta-llama/Llama-3.1-70B").num_params > get_gpu("H100-80GB").memory_bytes
    assert not report.fits and any(r.startswith("vLLM cannot start") for r in report.reasons)
    assert min_gpus(EstimateRequest(**LLAMA70_GRPO)) is None  # the issue's --min-gpus rested on it
    limit = gpu_limit(EstimateRequest(**LLAMA70_GRPO))
    assert not limit.found and any(r.startswith("vLLM") for r in limit.past_limit.reasons)
    report = plan(EstimateRequest(**LLAMA70_GRPO))
    assert not report.fits_any and any("raise vllm_tensor_parallel_size" in note for note in report.notes)
    # over 8 GPUs per engine: 141.1 / 8 = 17.6 GB of weights, and a count whose point estimate fits exists (within
    # the error band of capacity, extrapolated for FSDP on several nodes: TIGHT counts with allow_tight)
    assert min_gpus(EstimateRequest(**{**LLAMA70_GRPO, "vllm_tensor_parallel_size": 8}), allow_tight=True) is not None


# ------------------------------------------------------------------ 7. one verdict: GPU memory and host RAM

# The README's headline PPO (ReMax paper's script) with --offload optimizer: 28.83 GiB per GPU fits the A100-40GB,
# but its offloaded Adam states and fp32 masters need 223.7 GiB of host RAM per node (README), more than 128
HEADLINE_OFFLOAD = dict(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB", zero_stage=2,
                        ref_zero_stage=3, reward_zero_stage=3, offload_ref=True, offload_reward=True,
                        gradient_checkpointing=True, rollout_engine="hybrid-engine", offload="optimizer",
                        host_ram_bytes_per_node=128 * GiB)


def test_host_ram_is_part_of_the_verdict():
    report = memplan.estimate(**HEADLINE_OFFLOAD)
    assert report.gpu_fits and not report.host_fits and not report.fits
    assert report.host_bytes_per_node > 128 * GiB
    assert [r.split(":")[0] for r in report.reasons] == ["host RAM"]


def test_one_verdict_in_cli_and_api():
    args = ["estimate", "--model", "meta-llama/Llama-2-7b-hf", "--algo", "ppo", "--gpus", "8xA100-40GB",
            "--zero-stage", "2", "--ref-zero-stage", "3", "--reward-zero-stage", "3", "--offload-ref",
            "--offload-reward", "--gradient-checkpointing", "--rollout-engine", "hybrid-engine", "--offload",
            "optimizer", "--host-ram-gib", "128"]
    out = CliRunner().invoke(app, args)
    assert "DOES NOT FIT  peak 37.24 GiB" in out.output and "✗ host RAM: CPU offload needs 223.7 GiB" in out.output
    body = {k: v for k, v in HEADLINE_OFFLOAD.items()}
    data = TestClient(create_app()).post("/v1/estimate", json=body).json()
    assert (data["fits"], data["gpu_fits"], data["host_fits"]) == (False, True, False)


# ------------------------------------------------------------------ 8. GPUs per node from the GPU kind


@pytest.mark.parametrize("gpu", list_gpus(), ids=lambda g: g.name)
def test_every_gpu_has_a_node_size_with_its_source(gpu):
    import json
    from pathlib import Path

    import memplan.catalog

    rows = json.loads((Path(memplan.catalog.__file__).parent / "gpus.json").read_text())["gpus"]
    row = next(r for r in rows if r["name"] == gpu.name)
    assert gpu.gpus_per_node == row["gpus_per_node"] >= 1
    assert row["gpus_per_node_source"].startswith("https://") and row["gpus_per_node_basis"]


def test_n_gpus_above_a_node_are_whole_nodes():
    cluster = parse_cluster("32xA100-80GB")  # an HGX A100 board holds 8: 4 nodes of 8, not one of 32
    assert (cluster.num_nodes, cluster.gpus_per_node, cluster.nodes_inferred) == (4, 8, True)
    assert parse_cluster("8xA100-80GB").num_nodes == 1
    assert parse_cluster("1x16xV100-32GB").gpus_per_node == 16  # written out (a DGX-2): taken as written
    with pytest.raises(InputError, match="2x6xH100-80GB") as err:  # 12 do not fill nodes of 8
        parse_cluster("12xH100-80GB")
    assert err.value.field == "gpus"


def test_host_ram_per_node_counts_eight_gpus():
    # the same run written both ways: host RAM per node is 8 GPUs' share, not 32 GPUs' (the 1027.8 GiB)
    run = dict(model="meta-llama/Llama-2-7b-hf", algo="ppo", zero_stage=3, offload="optimizer", hybrid_shard=True)
    inferred = memplan.estimate(**run, gpus="32xA100-80GB")
    written = memplan.estimate(**run, gpus="4x8xA100-80GB")
    assert inferred.host_bytes_per_node == written.host_bytes_per_node
    assert inferred.peak_bytes_per_gpu == written.peak_bytes_per_gpu
    assert sum(m.host_bytes for m in written.models) * 8 == written.host_bytes_per_node
    assert any("4 nodes × 8 GPUs" in note for note in inferred.notes)


# ------------------------------------------------------------------ 9. ambiguous names, ASCII digits


@pytest.mark.parametrize(("text", "choices"), [
    ("8xA100", "A100-40GB or A100-80GB"), ("8xa100", "A100-40GB or A100-80GB"),
    ("8 x A100", "A100-40GB or A100-80GB"), ("8xV100", "V100-16GB or V100-32GB"),
])
def test_ambiguous_gpu_lists_the_choices(text, choices):
    with pytest.raises(UnknownGPUError, match=choices) as err:
        parse_cluster(text)
    assert err.value.field == "gpus"


@pytest.mark.parametrize("text", ["８xH100", "٨xH100", "2x８xH100", "８"])
def test_only_ascii_digits(text):
    with pytest.raises(InputError, match="ASCII digits|unknown GPU") as err:
        parse_cluster(text)
    assert err.value.field == "gpus"


# ------------------------------------------------------------------ 10. knobs the framework cannot apply

DSCHAT = dict(HEADLINE_OFFLOAD, offload="none", host_ram_bytes_per_node=1 << 40)  # 51.41 GiB: does not fit


def test_plan_proposes_nothing_deepspeed_chat_cannot_run():
    report = plan(EstimateRequest(**DSCHAT))
    assert not report.as_given.fits and report.fits_any
    assert "tp" not in report.knobs and "placement" not in report.knobs  # the plan proposed --tp 1→2
    assert all("tp" not in c.changes and "placement" not in c.changes for c in report.candidates)


@pytest.mark.parametrize(("change", "field"), [
    (dict(tp=2), "tp"), (dict(engine="fsdp", zero_stage=3, ref_zero_stage=None, reward_zero_stage=None), "engine"),
])
def test_deepspeed_chat_refuses_what_it_cannot_run(change, field):
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**DSCHAT, **change})
    assert err.value.field == field


def test_fsdp_plan_has_no_stage_one():
    request = EstimateRequest(model="meta-llama/Llama-3.1-8B", algo="grpo", gpus="8xA100-40GB", engine="fsdp",
                              micro_batch_size=4)
    for c in plan(request).candidates:
        stages = [c.request.zero_stage, c.request.actor_zero_stage, c.request.ref_zero_stage]
        assert 1 not in stages, c.changes


# ------------------------------------------------------------------ 11. contradictory or ignored options

LLAMA8 = dict(model="meta-llama/Llama-3.1-8B", gpus="8xH100-80GB")


@pytest.mark.parametrize(("fields", "field"), [
    (dict(algo="sft", ref="separate"), "ref"),
    (dict(algo="sft", ref="lora-shared", lora_rank=8), "ref"),
    (dict(algo="dpo", group_size=16), "group_size"),
    (dict(algo="dpo", rollout_batch_size=4), "rollout_batch_size"),
    (dict(algo="dpo", rollout_engine="vllm"), "rollout_engine"),
    (dict(algo="ppo", seq_len=4096), "seq_len"),
    (dict(algo="ppo", rollout_engine="hf", vllm_gpu_memory_utilization=0.9), "vllm_gpu_memory_utilization"),
    (dict(algo="ppo", rollout_engine="hf", vllm_tensor_parallel_size=2), "vllm_tensor_parallel_size"),
    (dict(algo="grpo", rollout_engine="vllm", vllm_tensor_parallel_size=16), "vllm_tensor_parallel_size"),
    (dict(algo="grpo", rollout_engine="vllm", vllm_tensor_parallel_size=3), "vllm_tensor_parallel_size"),
    (dict(algo="grpo", engine="torch", tp=2), "tp"),
    (dict(algo="grpo", zero_stage=3, offload_reward=True), "offload_reward"),  # GRPO's reward: 'rule'
    (dict(algo="sft", zero_stage=3, offload_ref=True), "offload_ref"),
])
def test_contradictions_are_errors_naming_the_field(fields, field):
    with pytest.raises(InputError) as err:
        memplan.estimate(**LLAMA8, **fields)
    assert err.value.field == field


@pytest.mark.parametrize(("fields", "words"), [
    (dict(algo="ppo", seq_len=512), "seq_len 512: ignored"),  # = prompt_len + gen_len (256 + 256)
    (dict(algo="dpo", group_size=1), "group_size 1: ignored"),
    (dict(algo="grpo", rollout_engine="remote", vllm_gpu_memory_utilization=0.9), "remote engine's GPUs"),
    (dict(algo="ppo", vllm_sleep_mode=False), "vllm_sleep_mode False: ignored"),
    (dict(algo="grpo", reward_model="meta-llama/Llama-3.1-8B"), "set reward 'model' to use one"),
    (dict(algo="dpo", critic_zero_stage=3), "critic_zero_stage 3: ignored, dpo has no critic"),
])
def test_ignored_options_are_notes(fields, words):
    report = memplan.estimate(**LLAMA8, **fields)
    assert any(words in note for note in report.notes), report.notes


def test_cli_and_api_name_the_option():
    out = CliRunner().invoke(app, ["estimate", "--model", "meta-llama/Llama-3.1-8B", "--algo", "dpo",
                                   "--group-size", "16"])
    assert out.exit_code == 2 and "error: --group-size:" in out.output, out.output
    r = TestClient(create_app()).post("/v1/estimate", json={**LLAMA8, "algo": "sft", "ref": "separate"})
    assert r.status_code == 422 and "ref" in r.text, r.text


def test_compare_drops_what_an_algorithm_has_no_use_for():
    # a GRPO request with a group compared against DPO: DPO is estimated without the group, not refused
    from memplan.comparison import compare_algorithms

    result = compare_algorithms(EstimateRequest(**LLAMA8, algo="grpo", group_size=16), ("grpo", "dpo"))
    assert all(row.error is None for row in result.rows), result.rows
    # a PPO request offloading its reward model, against GRPO (reward 'rule'): no reward model to offload
    ppo = EstimateRequest(**LLAMA8, algo="ppo", zero_stage=3, offload_reward=True, seq_len=None)
    assert all(row.error is None for row in compare_algorithms(ppo, ("ppo", "grpo", "dpo")).rows)
