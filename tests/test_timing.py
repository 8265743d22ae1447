"""memplan.timing: each time term worked by hand from gpu_perf.json's figures, the phases of each algorithm, the
public measured runs of benchmarks/corpus/timing/public_runs.jsonl, and the CLI and API entry points."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import memplan
from memplan.catalog import get_model, list_gpus
from memplan.errors import InputError
from memplan.report import EstimateRequest
from memplan.timing import StepTime, formulas, step_time
from memplan.timing.hardware import (
    BUS_EFFICIENCY, DECODE_HBM_EFFICIENCY, EAGER_DECODE_SECONDS_PER_LAYER, HOST_MEMORY_EFFICIENCY, MATMUL_EFFICIENCY,
    PCIE_EFFICIENCY, get_perf, known_gpus,
)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "benchmarks" / "corpus" / "timing" / "public_runs.jsonl"
A100 = get_perf("A100-80GB")


# ------------------------------------------------------------------------------------------ the catalog


@pytest.mark.parametrize("gpu", [g.name for g in list_gpus()])
def test_every_catalog_gpu_has_performance_figures(gpu):
    perf = get_perf(gpu)
    assert perf.bf16_flops > 0 and perf.hbm_bytes_per_s > 0 and perf.pcie_bytes_per_s > 0
    assert perf.internode_bytes_per_s > 0 and perf.host_memory_bytes_per_s > 0
    assert perf.source.startswith("https://")


def test_perf_file_names_only_catalog_gpus():
    assert set(known_gpus()) == {g.name for g in list_gpus()}


def test_a100_figures_are_the_datasheets():
    # A100 datasheet (SXM4 80GB): 312 TFLOPS bf16 dense, 2,039 GB/s HBM2e, NVLink 600 GB/s (300 each way),
    # PCIe Gen4 64 GB/s (32 each way); DGX A100: 8 × 200 Gb/s HDR InfiniBand = 25 GB/s per GPU
    assert (A100.bf16_flops, A100.hbm_bytes_per_s) == (312e12, 2039e9)
    assert (A100.nvlink_bytes_per_s, A100.pcie_bytes_per_s, A100.internode_bytes_per_s) == (300e9, 32e9, 25e9)


def test_unknown_gpu_names_the_field():
    with pytest.raises(InputError, match="gpus"):
        get_perf("no-such-gpu")


# ------------------------------------------------------------------------------------- terms by hand


def test_forward_flops_tiny_llama_by_hand():
    spec = get_model("tiny-llama")  # h 64, 2 layers, 4 heads × 16, 2 KV heads, f 176, V 512, untied
    # per layer: q 64·64 + k 64·32 + v 64·32 + o 64·64 = 12,288; gate, up, down 3·64·176 = 33,792 → 46,080
    # P = 2 · 46,080 + LM head 512·64 = 92,160 + 32,768 = 124,928
    assert formulas.matmul_params(spec, lm_head=True) == 124_928
    assert formulas.matmul_params(spec, lm_head=False) == 92_160 + 64  # a scalar head: h
    # one sequence of 8 tokens: 2·P·s = 1,998,848; attention 4·L·(a·d)·s² = 4·2·64·64 = 32,768
    assert formulas.forward_flops(spec, True, 8, 1) == 2_031_616
    assert formulas.forward_flops(spec, True, 8, 3) == 3 * 2_031_616


def test_moe_counts_the_routed_experts_only():
    spec = get_model("mistralai/Mixtral-8x7B-v0.1")  # h 4096, 32 layers, 8 KV heads × 128, f 14336, 8 experts, top-2
    # per layer: q, o 4096² each + k, v 4096·1024 each = 41,943,040; router 4096·8 = 32,768;
    # 2 routed experts × 3 · 4096 · 14336 = 352,321,536 → 394,297,344; × 32 + LM head 32000 · 4096
    assert formulas.matmul_params(spec, lm_head=True) == 394_297_344 * 32 + 32_000 * 4096


def test_tensor_parallel_all_reduces_by_hand():
    """TP 2 on 8×H100, Llama-2-7B SFT, micro batch 1 × 2048 tokens, no checkpointing: 4 all-reduces per layer
    (2 forward, 2 backward) of 2048 · 4096 · 2 bytes = 16.78 MB each; an all-reduce over 2 GPUs sends
    2 · ½ · 16.78 MB = 16.78 MB per GPU, at 450 GB/s · 0.75: 49.7 µs; × 128 = 6.36 ms."""
    base = dict(model="meta-llama/Llama-2-7b-hf", algo="sft", gpus="8xH100-80GB", engine="fsdp", seq_len=2048)
    with_tp = step_time(EstimateRequest(**base, tp=2))
    block = next(i for i in _items(with_tp, "actor_update") if "backward" in i.what)
    h100 = get_perf("H100-80GB")
    fwd = formulas.forward_flops(get_model("meta-llama/Llama-2-7b-hf"), True, 2048, 1)
    compute = formulas.compute_seconds(3 * fwd, h100, "bf16", tp=2)
    tp = 128 * 2048 * 4096 * 2 / (450e9 * BUS_EFFICIENCY)
    assert tp == pytest.approx(6.36e-3, rel=1e-3)
    assert block.seconds == pytest.approx(compute + tp)


def test_train_flops_factor():
    assert formulas.train_flops_factor(checkpointing=False, lora=False) == 3  # forward + 2 × backward
    assert formulas.train_flops_factor(checkpointing=True, lora=False) == 4  # + recomputed forward
    assert formulas.train_flops_factor(checkpointing=True, lora=True) == 3  # no base weight gradients


def test_compute_seconds_by_hand():
    # 312e12 FLOP/s × 0.50 = 156e12: 1.56e15 FLOPs take 10 s; over TP 2, 5 s
    assert formulas.compute_seconds(1.56e15, A100, "bf16") == pytest.approx(10.0)
    assert formulas.compute_seconds(1.56e15, A100, "bf16", tp=2) == pytest.approx(5.0)
    assert MATMUL_EFFICIENCY == 0.5


def test_decode_step_is_bytes_over_bandwidth():
    # Llama-2-7B: 6,738,415,616 params × 2 bytes = 13.477 GB; KV per token 2·32·32·128·2 = 524,288 bytes;
    # 8 sequences at context 384: 8·384·524,288 = 1.611 GB; together 15.087 GB / (2,039e9 × 0.71) = 10.42 ms
    spec = get_model("meta-llama/Llama-2-7b-hf")
    assert formulas.kv_bytes_per_token(spec, 2) == 524_288
    weights, kv = 6_738_415_616 * 2, 8 * 384 * 524_288
    seconds, bound = formulas.decode_step_seconds(weights, kv, 0.0, A100, "bf16")
    assert bound == "hbm"
    assert seconds == pytest.approx((weights + kv) / (2039e9 * DECODE_HBM_EFFICIENCY))
    assert seconds == pytest.approx(10.42e-3, rel=1e-3)
    # without CUDA graphs: 32 layers × 1.23 ms = 39.2 ms (1 / 25.5 tokens/s) is the floor
    seconds, bound = formulas.decode_step_seconds(weights, kv, 0.0, A100, "bf16",
                                                  launch_seconds=32 * EAGER_DECODE_SECONDS_PER_LAYER)
    assert bound == "launch" and seconds == pytest.approx(1 / 25.5)
    assert EAGER_DECODE_SECONDS_PER_LAYER * 32 == pytest.approx(0.0392, rel=1e-3)


def test_collectives_by_hand():
    # all-gather of 13.477 GB over 4 GPUs: each sends 3/4 of it, 10.108 GB / (300e9 × 0.75) = 44.9 ms
    nbytes = formulas.shard_collective_bytes(13.477e9, 4)
    assert nbytes == pytest.approx(10.108e9, rel=1e-4)
    assert formulas.bus_seconds(nbytes, A100, multi_node=False) == pytest.approx(nbytes / (300e9 * BUS_EFFICIENCY))
    # across nodes the 25 GB/s InfiniBand per GPU is the link: 12× slower than NVLink
    assert formulas.bus_seconds(nbytes, A100, multi_node=True) == pytest.approx(
        12 * formulas.bus_seconds(nbytes, A100, multi_node=False))
    assert formulas.shard_collective_bytes(1e9, 1) == 0.0


def test_host_terms_by_hand():
    # 13.477 GB over PCIe Gen4 at 0.80 × 32 GB/s = 25.6 GB/s: 0.526 s
    assert formulas.pcie_seconds(13.477e9, A100) == pytest.approx(13.477e9 / (32e9 * PCIE_EFFICIENCY))
    assert formulas.pcie_seconds(13.477e9, A100) == pytest.approx(0.5265, rel=1e-3)
    # CPU AdamW of 6.738e9 params: 30 bytes each = 202.2 GB / (409.6 GB/s × 0.60 = 245.8 GB/s) = 0.823 s
    assert formulas.cpu_optimizer_seconds(6_738_415_616, A100) == pytest.approx(
        6_738_415_616 * 30 / (409.6e9 * HOST_MEMORY_EFFICIENCY))
    assert formulas.cpu_optimizer_seconds(6_738_415_616, A100) == pytest.approx(0.8226, rel=1e-3)
    # the same on the GPU: 202.2 GB / (2,039e9 × 0.8) = 0.124 s
    assert formulas.gpu_optimizer_seconds(6_738_415_616, A100) == pytest.approx(0.1239, rel=1e-3)


# ------------------------------------------------------------------------------------------ the phases

REMAX_SETUP = dict(model="meta-llama/Llama-2-7b-hf", actor_zero_stage=2, critic_zero_stage=2, ref_zero_stage=3,
                   reward_zero_stage=3, offload_ref=True, offload_reward=True, gradient_checkpointing=True,
                   rollout_engine="hybrid-engine", attention="eager", offload="optimizer")


def _items(result: StepTime, phase: str) -> list:
    return [i for p in result.phases if p.phase == phase for i in p.items]


def test_remax_generates_twice_and_scores_the_greedy_pass():
    result = step_time(EstimateRequest(**REMAX_SETUP, algo="remax", gpus="4xA100-80GB", micro_batch_size=40))
    decodes = [i for i in _items(result, "rollout") if "decode" in i.what]
    assert [i.what.split(":")[0] for i in decodes] == ["sampled", "greedy"]
    assert {p.phase for p in result.phases} == {"rollout", "scoring", "actor_update"}  # no critic
    reward = next(i for i in _items(result, "scoring") if i.role == "reward")
    assert "80 sequences" in reward.what
    assert sum(p.share for p in result.phases) == pytest.approx(1.0)
    assert result.seconds_per_step == pytest.approx(sum(p.seconds for p in result.phases))


def test_ppo_step_by_hand():
    """PPO, 1×A100-80GB, batch 32: the step is the sum of its blocks, each worked from the formulas."""
    result = step_time(EstimateRequest(**REMAX_SETUP, algo="ppo", gpus="1xA100-80GB", micro_batch_size=32))
    actor = get_model("meta-llama/Llama-2-7b-hf")
    fwd = formulas.forward_flops(actor, True, 512, 32)
    update = next(i for i in _items(result, "actor_update") if "backward" in i.what)
    assert update.seconds == pytest.approx(formulas.compute_seconds(4 * fwd, A100, "bf16"))  # checkpointed
    decode = next(i for i in _items(result, "rollout") if "decode" in i.what)
    # the hybrid engine's fused layers (15 kernels, launches.py) launch in 11.5 ms a token, under reading the weights
    # and 32 × 384 tokens of KV: (13.477 + 6.442) GB / (2,039e9 × 0.71) = 13.76 ms; 256 tokens = 3.522 s
    kv = 32 * 384 * formulas.kv_bytes_per_token(actor, 2)
    assert decode.bound == "hbm" and decode.seconds == pytest.approx(
        256 * (6_738_415_616 * 2 + kv) / (2039e9 * DECODE_HBM_EFFICIENCY))
    assert decode.seconds == pytest.approx(3.522, rel=1e-3)
    cpu = next(i for i in _items(result, "actor_update") if "CPU optimizer" in i.what)
    assert cpu.seconds == pytest.approx(formulas.cpu_optimizer_seconds(6_738_415_616, A100))
    assert result.prompts_per_step == 32 and result.tokens_per_step == 32 * 512
    assert result.tokens_per_second_per_gpu == pytest.approx(32 * 512 / result.seconds_per_step)


def test_wall_time_is_steps_times_step():
    result = step_time(EstimateRequest(**REMAX_SETUP, algo="remax", gpus="4xA100-80GB", micro_batch_size=40),
                       dataset_samples=45_000)
    assert result.steps == 282  # ceil(45,000 / (40 × 4))
    assert result.wall_seconds == pytest.approx(282 * result.seconds_per_step)
    assert step_time(EstimateRequest(**REMAX_SETUP, algo="remax", gpus="4xA100-80GB", micro_batch_size=40),
                     dataset_samples=45_000, epochs=2).steps == 563


def test_vllm_decode_is_hbm_bound_and_syncs_weights():
    result = step_time(EstimateRequest(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", engine="fsdp",
                                       zero_stage=3, rollout_engine="vllm", micro_batch_size=4,
                                       rollout_batch_size=16, group_size=8, gen_len=1024, prompt_len=512))
    rollout = _items(result, "rollout")
    assert "weight sync into vLLM" in rollout[0].what
    decode = next(i for i in rollout if "decode" in i.what)
    assert decode.bound in ("hbm", "compute")
    assert "128 sequences" in decode.what  # 16 prompts × 8


def test_vllm_tensor_parallel_decode_by_hand():
    """vLLM over 2 GPUs (vllm_tensor_parallel_size 2), 8×H100, Llama-2-7B, 16 sequences per GPU, 512 + 512 tokens:
    each GPU reads half the weights (13.477 GB / 2) and the KV of its own 16 sequences at the mean context 768
    (16 · 768 · 524,288 B = 6.442 GB) per step, at 3,350e9 B/s × 0.71; plus two all-reduces per layer of the
    engine's 32 sequences × 4096 × 2 B (a 2-GPU all-reduce sends that much per GPU) at 450e9 × 0.75 B/s."""
    result = step_time(model="meta-llama/Llama-2-7b-hf", algo="grpo", gpus="8xH100-80GB", engine="fsdp",
                       zero_stage=3, rollout_engine="vllm", vllm_tensor_parallel_size=2, micro_batch_size=16,
                       rollout_batch_size=16, group_size=1, prompt_len=512, gen_len=512)
    decode = next(i for i in _items(result, "rollout") if "decode" in i.what)
    hbm = (6_738_415_616 * 2 / 2 + 16 * 768 * 524_288) / (3350e9 * DECODE_HBM_EFFICIENCY)
    tp = 64 * 32 * 4096 * 2 / (450e9 * BUS_EFFICIENCY)
    assert decode.bound == "hbm"
    assert decode.seconds == pytest.approx(512 * (hbm + tp))


def test_offloaded_reference_streams_its_weights_over_pcie():
    """ReMax on 1×A100-80GB at batch 1: the reference (ZeRO-3, parameters on the CPU) copies its 13.477 GB of
    bf16 weights over PCIe for its one forward call, 13.477e9 / 25.6e9 = 0.526 s, more than the forward's FLOPs."""
    result = step_time(EstimateRequest(**REMAX_SETUP, algo="remax", gpus="1xA100-80GB", micro_batch_size=1))
    ref = next(i for i in _items(result, "scoring") if i.role == "reference")
    assert ref.bound == "pcie" and ref.seconds == pytest.approx(6_738_415_616 * 2 / (32e9 * PCIE_EFFICIENCY))
    reward = next(i for i in _items(result, "scoring") if i.role == "reward")
    assert reward.bound == "pcie" and "2 call(s)" in reward.what  # sampled, then greedy: two copies


def test_step_time_takes_keywords_like_estimate():
    request = EstimateRequest(model="tiny-llama", algo="sft", seq_len=64)
    assert step_time(model="tiny-llama", algo="sft", seq_len=64) == step_time(request)
    assert step_time(request, micro_batch_size=2).tokens_per_step == 2 * 64


def test_zero3_hf_generation_gathers_per_token():
    base = dict(model="meta-llama/Llama-2-7b-hf", algo="grpo", gpus="8xA100-80GB", zero_stage=3, group_size=4)
    per_token = step_time(EstimateRequest(**base))
    gathered = step_time(EstimateRequest(**base, gather_for_generation=True))
    assert next(i for i in _items(per_token, "rollout") if "decode" in i.what).bound == "nvlink"
    assert gathered.seconds_per_step < per_token.seconds_per_step


def test_hybrid_engine_gathers_a_zero3_actor_per_generate_call():
    """ReMax with the actor on ZeRO-3 over 4 A100s: the hybrid engine gathers the 13.477 GB of bf16 weights at each
    of its two generate calls, 3/4 of it per GPU over NVLink: 10.108e9 / (300e9 × 0.75) = 44.9 ms each."""
    result = step_time(EstimateRequest(**{**REMAX_SETUP, "actor_zero_stage": 3}, algo="remax", gpus="4xA100-80GB",
                                       micro_batch_size=8))
    gathers = [i for i in _items(result, "rollout") if "gather" in i.what]
    assert [i.what.split(":")[0] for i in gathers] == ["sampled", "greedy"]
    assert all(i.bound == "nvlink" and i.seconds == pytest.approx(0.04492, rel=1e-3) for i in gathers)


def test_dpo_and_sft_do_not_generate():
    dpo = step_time(EstimateRequest(model="tiny-llama", algo="dpo", seq_len=128, micro_batch_size=2))
    sft = step_time(EstimateRequest(model="tiny-llama", algo="sft", seq_len=128, micro_batch_size=2))
    assert [p.phase for p in dpo.phases] == ["scoring", "actor_update"]
    assert [p.phase for p in sft.phases] == ["actor_update"]
    assert dpo.prompts_per_step == 2 and dpo.tokens_per_step == 4 * 128  # chosen + rejected


def test_notes_say_what_memplan_does_not_see():
    result = step_time(EstimateRequest(**REMAX_SETUP, algo="ppo", gpus="4xA100-80GB", micro_batch_size=30))
    assert any("long tail" in n and "slowest rank" in n for n in result.notes)
    assert any("PCIe" in n for n in result.notes)


def test_bad_input_names_the_field():
    request = EstimateRequest(model="tiny-llama", algo="sft")
    with pytest.raises(InputError, match="dataset_samples"):
        step_time(request, dataset_samples=0)
    with pytest.raises(InputError, match="epochs"):
        step_time(request, epochs=0)
    with pytest.raises(InputError, match="tp"):
        step_time(EstimateRequest(model="tiny-llama", algo="ppo", gpus="2xA100-80GB", tp=3, engine="fsdp"))


# ---------------------------------------------------------------------- the public measured runs

RECORDS = {r["id"]: r for r in map(json.loads, CORPUS.read_text(encoding="utf-8").splitlines())}
TOLERANCE = 0.25
"""±25 % on the hours: MATMUL_EFFICIENCY's source spans MFU 0.47–0.60 (±12 %); the eager launch floor was measured
at batch 1 on another model code (±10 %); every response is taken at its maximum length. Nothing is fitted."""

# Within ±25 %: the ReMax README's ReMax runs on 1 GPU with offload (0.78) and on 4 GPUs without (0.85). Since the
# hybrid engine is charged its own kernels (launches.py: 15 per Llama layer, 14 per OPT layer, not HF's 51) the
# DeepSpeed-Chat rows fall under (0.35-0.66) and ReMax on 4 GPUs with offload too (0.69): docs/time.md.
WITHIN = ("remax-readme/remax-1gpu-offload", "remax-readme/remax-4gpu-no-offload")
UNDER, OVER = "under", "over"
GAPS = {  # outside ±25 % today, each with its direction and why (benchmarks/results/timing.md, docs/time.md);
    # strict: a fix must move them
    "remax-readme/ppo-4gpu-offload": (UNDER, "PPO measured 2× slower per prompt than its FLOPs and bytes account for"),
    "remax-readme/ppo-1gpu-offload": (UNDER, "as above"),
    "remax-readme/remax-4gpu-offload": (UNDER, "0.69: the offloaded step the README implies (10.3 s) is 1.2 s here"),
    "dschat-blog/opt-6.7b-8xA100-80GB": (UNDER, "0.63: with DeepSpeed's kernel count the hybrid engine's decode is "
                                         "faster than the measured runs imply"),
    "dschat-blog/opt-6.7b-8xA100-40GB": (UNDER, "as above (0.52)"),
    "dschat-readme/opt-1.3b-8xA100-40GB": (UNDER, "as above (0.46)"),
    "dschat-readme/opt-1.3b-1xA6000": (UNDER, "as above (0.35)"),
    "dschat-blog/opt-13b-8xA100-80GB": (UNDER, "the blog's batches and inference TP are not published / not modeled"),
    "dschat-blog/opt-30b-8xA100-80GB": (UNDER, "as above"), "dschat-blog/opt-66b-8xA100-80GB": (UNDER, "as above"),
    "dschat-blog/opt-13b-8xA100-40GB": (UNDER, "as above"), "dschat-blog/opt-30b-8xA100-40GB": (UNDER, "as above"),
    "dschat-blog/opt-13b-64xA100-80GB": (UNDER, "as above"), "dschat-blog/opt-30b-64xA100-80GB": (UNDER, "as above"),
    "dschat-blog/opt-66b-64xA100-80GB": (UNDER, "as above"),
    "openrlhf-readme/dschat-7b-16xA800-80GB": (UNDER, "PPO with a 7B critic, as the ReMax README's PPO rows; lengths "
                                               "assumed"),
    # the measured A100-40GB/80GB ratio (2.0/1.4 h; 15.4/11.7 h) is HBM's (2,039/1,555 GB/s = 1.31); memplan's
    # OPT-1.3B decode stays launch-bound (24 × 14 kernels), the same time on both GPUs, now under both
    "dschat-readme/opt-1.3b-8xA100-80GB": (UNDER, "0.66; the measured 80GB/40GB speed-up is HBM's"),
    "dschat-readme/opt-1.3b-1xA100-80GB": (UNDER, "as above (0.59)"),
    "dschat-readme/opt-1.3b-1xA100-40GB": (UNDER, "as above (0.45)"),
    "dschat-readme/opt-6.7b-1xA100-80GB": (UNDER, "0.54; single-GPU batch 8 assumed from run_6.7b_lora.sh"),
    "dschat-readme/opt-1.3b-64xA100-80GB": (UNDER, "multi-node settings not published (single-node script taken)"),
    "dschat-readme/opt-6.7b-64xA100-80GB": (UNDER, "as above"),
    "dschat-readme/opt-1.3b-1xV100-32GB": (UNDER, "V100: no bf16/flash kernels, fp16 eager on 2017 tensor cores; "
                                           "matmul efficiency there not sourced"),
    "dschat-readme/opt-6.7b-1xA6000": (UNDER, "one 48 GB GPU holding 7B with LoRA: batch and offload not published"),
    "dschat-readme/opt-6.7b-1xA100-40GB": (UNDER, "as above, 40 GB"),
    # measured phase splits (tests/test_timing_phase_split.py compares each phase)
    "dschat-log/opt-1.3b-critic-350m-16xV100-32GB": (UNDER, "0.71: generation within (0.83), training 0.50"),
    "openrlhf-paper/dschat-llama2-7b-16xA800-80GB-phase-split": (UNDER, "0.44: training within (0.82), generation "
                                                                 "0.38 and scoring 0.34"),
}


def _hours(record_id: str) -> float:
    record = RECORDS[record_id]
    result = step_time(EstimateRequest(**record["request"]), dataset_samples=record["dataset_samples"],
                       epochs=record["epochs"])
    return result.wall_seconds / 3600


def test_corpus_is_covered():
    assert set(RECORDS) == set(WITHIN) | set(GAPS)
    for record in RECORDS.values():
        assert record["source"]["url"].startswith("https://") and record["assumptions"]


@pytest.mark.parametrize("record_id", WITHIN)
def test_measured_hours_within_tolerance(record_id):
    measured = RECORDS[record_id]["measured_hours"]
    assert _hours(record_id) == pytest.approx(measured, rel=TOLERANCE)


@pytest.mark.parametrize("record_id", sorted(GAPS))
def test_known_gaps_keep_their_direction(record_id):
    """Each gap under- or overestimates as GAPS says; pinned so a change shows."""
    ratio = _hours(record_id) / RECORDS[record_id]["measured_hours"]
    if GAPS[record_id][0] == OVER:
        assert ratio > 1 + TOLERANCE
    else:
        assert ratio < 1 - TOLERANCE


@pytest.mark.xfail(strict=True, reason="memplan estimates PPO/ReMax at 1.20 (4 GPUs) and 1.26 (1 GPU) per prompt "
                   "against the README's 2.14 and 2.16: its PPO step is 35.2 s (4 GPUs) and 30.5 s (1 GPU) short of "
                   "the measured 57.6 and 56.3 s, a cost no source read pins (docs/time.md, 'What is unexplained')")
@pytest.mark.parametrize("gpus", ["4gpu", "1gpu"])
def test_ppo_remax_ratio_within_15_percent(gpus):
    ppo, remax = f"remax-readme/ppo-{gpus}-offload", f"remax-readme/remax-{gpus}-offload"
    measured = RECORDS[ppo]["measured_hours"] / RECORDS[remax]["measured_hours"]  # 2.14, 2.16
    assert _hours(ppo) / _hours(remax) == pytest.approx(measured, rel=0.15)


def test_ppo_slower_than_remax_per_prompt():
    """What the model does reproduce: PPO takes longer per prompt than ReMax in both README settings."""
    for gpus in ("4gpu", "1gpu"):
        assert _hours(f"remax-readme/ppo-{gpus}-offload") > _hours(f"remax-readme/remax-{gpus}-offload")


# --------------------------------------------------------------------------------- entry points, cost


def test_exported():
    assert memplan.step_time is step_time and memplan.StepTime is StepTime


def test_core_imports_no_torch_fastapi_rich():
    code = "import sys, memplan.timing; print([m for m in ('torch', 'fastapi', 'rich') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_fast():
    request = EstimateRequest(**REMAX_SETUP, algo="ppo", gpus="4xA100-80GB", micro_batch_size=30)
    step_time(request)
    start = time.perf_counter()
    for _ in range(200):
        step_time(request)
    assert (time.perf_counter() - start) / 200 < 1e-3  # well under a millisecond (≈0.3 ms on a shared 2-core VM)


def test_cli_time():
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from memplan.cli.app import app

    args = ["time", "--model", "meta-llama/Llama-2-7b-hf", "--algo", "remax", "--gpus", "4xA100-80GB",
            "--zero-stage", "2", "--ref-zero-stage", "3", "--reward-zero-stage", "3", "--offload-ref",
            "--offload-reward", "--offload", "optimizer", "--gradient-checkpointing", "--rollout-engine",
            "hybrid-engine", "--attention", "eager", "--micro-batch-size", "40", "--dataset-samples", "45000"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rollout" in result.output and "282 steps" in result.output
    as_json = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(as_json.output)["steps"] == 282
    bad = CliRunner().invoke(app, ["time", "--model", "tiny-llama", "--micro-batch-size", "0"])
    assert bad.exit_code == 2 and "--micro-batch-size" in bad.output


def test_api_time():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from api.main import app

    client = TestClient(app)
    body = {**REMAX_SETUP, "algo": "remax", "gpus": "4xA100-80GB", "micro_batch_size": 40, "dataset_samples": 45000}
    response = client.post("/v1/time", json=body)
    assert response.status_code == 200
    assert response.json()["steps"] == 282
    for field, value in (("dataset_samples", 0), ("micro_batch_size", 0), ("gpus", "4xB999"), ("epochs", "x")):
        response = client.post("/v1/time", json={**body, field: value})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", field]
