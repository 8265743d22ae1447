"""``vllm_sleep_mode``: colocated vLLM frees its memory outside rollout (verl), or keeps its reservation through
scoring and training (TRL's default: ``vllm_enable_sleep_mode=False``).

Expected: the reservation is ``gpu_memory_utilization`` × the GPU's capacity (the catalog's H100-80GB), added
to every phase after rollout when awake, and counted once in rollout either way.
"""

from __future__ import annotations

from typer.testing import CliRunner

import memplan
from memplan.catalog import get_gpu
from memplan.cli.app import app

RUN = dict(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", zero_stage=3, gradient_checkpointing=True,
           micro_batch_size=4, group_size=8, prompt_len=512, gen_len=1024, rollout_engine="vllm",
           vllm_gpu_memory_utilization=0.3)


def test_an_awake_vllm_keeps_its_reservation_in_every_phase():
    asleep = {p.phase: p for p in memplan.estimate(**RUN).phases}
    awake = {p.phase: p for p in memplan.estimate(**RUN, vllm_sleep_mode=False).phases}
    reserved = int(0.3 * get_gpu("H100-80GB").memory_bytes)
    assert awake["rollout"].total_bytes == asleep["rollout"].total_bytes
    for phase in ("scoring", "actor_update"):
        assert awake[phase].total_bytes - asleep[phase].total_bytes == reserved
        assert [li.bytes for li in awake[phase].items if "awake" in li.note] == [reserved]


def test_cli_flag():
    args = ["estimate", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus", "8xH100-80GB", "--zero-stage", "3",
            "--rollout-engine", "vllm", "--no-vllm-sleep-mode", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert memplan.Report.model_validate_json(r.stdout) == memplan.estimate(
        model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", zero_stage=3, rollout_engine="vllm",
        vllm_sleep_mode=False)
