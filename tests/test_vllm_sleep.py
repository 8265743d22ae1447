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
    # rollout: asleep, the generation (the reservation) is its peak; awake, the weight sync before it is, the
    # reservation beside one gathered tensor (ZeRO-3: the 152,064 × 3,584 bf16 embedding)
    assert awake["rollout"].total_bytes - asleep["rollout"].total_bytes == 152_064 * 3_584 * 2
    assert awake["rollout"].activity == "sampled rollout: weight sync to vLLM"
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


def test_plan_offers_sleep_mode_before_starving_vllm():
    """TRL's default (colocated vLLM awake, here at half the GPU) does not fit a 16-sequence update; sleep mode
    frees the reservation outside rollout (0.5 × 79.65 GiB) and ranks before a 0.2 fraction, which would leave
    vLLM about 1 GiB of KV cache beside Qwen2.5-7B's 14 GiB of weights."""
    from memplan.planner import KNOBS, plan
    from memplan.report import EstimateRequest

    request = EstimateRequest(**{**RUN, "micro_batch_size": 16, "rollout_batch_size": 4, "prompt_len": 1024,
                                 "gen_len": 4096, "vllm_gpu_memory_utilization": 0.5, "vllm_sleep_mode": False,
                                 "logprob_kernel": "chunked"})
    given = memplan.estimate(request)
    assert not given.fits and given.peak_phase == "actor_update"
    first = plan(request, allow=set(KNOBS) - {"micro_batch_size"}, allow_tight=True).candidates[0]
    assert first.changes == {"vllm_sleep_mode": (False, True)}
    asleep = memplan.estimate(request.model_copy(update={"vllm_sleep_mode": True}))
    assert given.peak_bytes_per_gpu - asleep.peak_bytes_per_gpu == int(0.5 * get_gpu("H100-80GB").memory_bytes)


def test_a_smaller_micro_batch_does_not_hide_the_other_fixes():
    """With the micro batch allowed too, halving it (16 → 8) fits and ranks first; sleep mode keeps all 16 and is
    listed as well: a leaf whose micro batch had to shrink does not prune the changes that keep it whole."""
    from memplan.planner import plan
    from memplan.report import EstimateRequest

    request = EstimateRequest(**{**RUN, "micro_batch_size": 16, "rollout_batch_size": 4, "prompt_len": 1024,
                                 "gen_len": 4096, "vllm_gpu_memory_utilization": 0.5, "vllm_sleep_mode": False,
                                 "logprob_kernel": "chunked"})
    changes = [c.changes for c in plan(request, allow_tight=True).candidates]
    assert changes[0] == {"micro_batch_size": (16, 8)}
    assert {"vllm_sleep_mode": (False, True)} in changes


def test_a_sleeping_engine_keeps_only_what_sleep_cannot_free():
    """What vLLM's source says a sleeping engine (level 1) keeps, and what memplan counts of it. ``CuMemAllocator.
    sleep`` (vllm/device_allocator/cumem.py) backs up the 'weights' tag (all of ``Worker.load_model``: weights,
    LoRA slots, rotary caches) to host RAM, unmaps the 'kv_cache' tag, then runs ``torch.cuda.empty_cache()``,
    which returns the profile run's and the sampler warm-up's cached blocks too. Left on the device: torch tensors
    allocated outside the CuMem pools — the model runner's persistent input buffers, counted here — the CUDA
    graphs (their pool and executables: sized by no source; memplan/estimator/__init__.py, Known limitations) and
    the CUDA context (the runtime's fixed bytes). So in scoring and the update, vLLM's one item is its buffers."""
    report = memplan.estimate(model="Qwen/Qwen2.5-0.5B-Instruct", algo="grpo", gpus="1xA100-40GB", engine="torch",
                              lora_rank=16, group_size=4, rollout_engine="vllm", vllm_gpu_memory_utilization=0.3,
                              gradient_checkpointing=True, idle_offload="params", ref="lora-adapter")
    # vllm 0.23 GPUModelRunner.__init__: input_ids int32 (4), positions int64 (8), req_indices int64 (8),
    # is_token_ids bool (1), query_pos int64 (8), inputs_embeds e·h = 2 × 896 (Qwen2.5-0.5B's hidden size), over
    # max_num_batched_tokens = 8192 tokens: 8192 × (29 + 1792) = 14,917,632 bytes
    buffers = 8192 * (4 + 8 + 8 + 1 + 8 + 2 * 896)
    assert buffers == 14_917_632
    for phase in report.phases:
        vllm = [li for li in phase.items if "vLLM" in li.note]
        if phase.phase == "rollout":  # awake: its reservation, its prefill's activations, and the same buffers
            assert [li.bytes for li in vllm if "input buffers" in li.note] == [buffers]
            continue
        assert [(li.category, li.bytes) for li in vllm] == [("buffer", buffers)], phase.phase
    # the CUDA context and cuBLAS workspace of the one process: the catalog's A100-40GB context (525,336,576 B, 501
    # MiB as AgileRL measured it) + the cuBLAS workspace memplan counts per process (estimator.CUBLAS_WORKSPACE_BYTES:
    # 4 MiB × 8 = 33,554,432 B)
    assert report.fixed_bytes == 525_336_576 + 33_554_432
