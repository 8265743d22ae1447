"""memplan.timing's terms read from the ReMax and DeepSpeed-Chat sources (issue 18): ReMax's experience forward of
the actor, DeepSpeed's fp32 gradient offload, DeepSpeed-Chat PPO's optimizer step per micro batch — each worked by
hand from gpu_perf.json's A100-80GB figures (PCIe Gen4 32 GB/s × PCIE_EFFICIENCY 0.80 = 25.6 GB/s; DGX A100 DRAM
409.6 GB/s × HOST_MEMORY_EFFICIENCY 0.60 = 245.76 GB/s)."""

from __future__ import annotations

import pytest

from memplan.report import EstimateRequest
from memplan.timing import StepTime, formulas, step_time
from memplan.timing.hardware import get_perf

A100 = get_perf("A100-80GB")
LLAMA_7B = 6_738_415_616  # transformers' count for meta-llama/Llama-2-7b-hf (memplan's catalog)
SETUP = dict(model="meta-llama/Llama-2-7b-hf", actor_zero_stage=2, critic_zero_stage=2, ref_zero_stage=3,
             reward_zero_stage=3, offload_ref=True, offload_reward=True, gradient_checkpointing=True,
             rollout_engine="hybrid-engine", attention="eager", offload="optimizer")


def _items(result: StepTime, phase: str, role: str) -> list:
    return [i for p in result.phases if p.phase == phase for i in p.items if i.role == role]


def test_remax_runs_the_actor_experience_forward():
    # liziniu/ReMax remax_trainer.py generate_experience: ``output = self.actor_model(seq, attention_mask=...)``
    # under no_grad, for the log-probs, entropy and KL — as PPO's old log-probs, so both score the actor
    for algo in ("remax", "ppo"):
        result = step_time(EstimateRequest(**SETUP, algo=algo, gpus="4xA100-80GB", micro_batch_size=40))
        (actor,) = _items(result, "scoring", "actor")
        fwd = formulas.forward_flops(_llama(), True, 512, 40)
        assert actor.seconds == pytest.approx(formulas.compute_seconds(fwd, A100, "bf16"))


def _llama():
    from memplan.catalog import get_model

    return get_model("meta-llama/Llama-2-7b-hf")


def test_offload_moves_fp32_gradients_down_and_16_bit_weights_up():
    # 4 ranks, ZeRO-2: 6,738,415,616 / 4 = 1,684,603,904 params per rank; fp32 gradients down (4 bytes,
    # DeepSpeed stage_1_and_2.py async_inplace_copy_grad_to_fp32_buffer_from_gpu: ``src_tensor.float()``) and
    # bf16 weights up (2): 10.108 GB / 25.6 GB/s = 0.3948 s
    assert formulas.offload_transfer_seconds(LLAMA_7B / 4, 2, A100) == pytest.approx(0.3948, rel=1e-3)
    result = step_time(EstimateRequest(**SETUP, algo="remax", gpus="4xA100-80GB", micro_batch_size=40))
    (down_up,) = [i for i in _items(result, "actor_update", "actor") if i.bound == "pcie"]
    assert down_up.seconds == pytest.approx(LLAMA_7B / 4 * 6 / 25.6e9)
    # one GPU: the whole 7B, 40.43 GB / 25.6 GB/s = 1.579 s
    assert formulas.offload_transfer_seconds(LLAMA_7B, 2, A100) == pytest.approx(1.5793, rel=1e-3)


def test_deepspeed_chat_ppo_steps_after_every_micro_batch():
    # DeepSpeed-Chat step-3 main.py calls train_rlhf per micro batch; ppo_trainer.py train_rlhf steps the actor and
    # the critic each time: 32 rollouts per GPU in micro batches of 8 = 4 CPU AdamW steps per model per rollout.
    # Each: 4 ranks × 1,684,603,904 params × 30 bytes = 202.15 GB / 245.76 GB/s = 0.8226 s → 4 × = 3.290 s
    request = EstimateRequest(**SETUP, algo="ppo", gpus="4xA100-80GB", micro_batch_size=8, rollout_batch_size=32)
    result = step_time(request)
    for phase, role in (("actor_update", "actor"), ("critic_update", "critic")):
        (cpu,) = [i for i in _items(result, phase, role) if i.bound == "host"]
        assert "× 4 (one per micro batch)" in cpu.what
        # the critic: Llama-2-7B without its LM head (32,000 × 4,096) plus a scalar head (4,096): 6,607,347,712
        params = LLAMA_7B if role == "actor" else LLAMA_7B - 32_000 * 4_096 + 4_096
        assert cpu.seconds == pytest.approx(4 * params * 30 / 245.76e9)  # actor 3.290 s, critic 3.226 s
    # ReMax's fork accumulates over the micro batches and steps once (its main.py: one actor_model.step())
    remax = step_time(request, algo="remax")
    (cpu,) = [i for i in _items(remax, "actor_update", "actor") if i.bound == "host"]
    assert cpu.seconds == pytest.approx(0.8226, rel=1e-3) and "×" not in cpu.what


def test_other_engines_step_once_per_rollout():
    request = EstimateRequest(**SETUP, algo="ppo", gpus="4xA100-80GB", micro_batch_size=8, rollout_batch_size=32)
    result = step_time(request, rollout_engine="hf")
    (cpu,) = [i for i in _items(result, "actor_update", "actor") if i.bound == "host"]
    assert cpu.seconds == pytest.approx(0.8226, rel=1e-3)
