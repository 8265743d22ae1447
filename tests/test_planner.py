"""The planner (``memplan.planner``): published limits reproduced, and the search checked against the estimator.

Expected values come from outside the planner: the ReMax paper and repository, DeepSpeed-Chat's published
single-GPU limits, and ``memplan.estimate`` re-run on every configuration the planner returns (a plan is only
as good as the estimates it searches; these tests check the search, not the estimator's accuracy).
"""

from __future__ import annotations

import subprocess
import sys
import time
from functools import partial

import pytest

import memplan
from memplan.errors import InputError
from memplan.estimator.resolve import for_algorithm
from memplan import planner
from memplan.comparison import compare_algorithms
from memplan.planner import COST_ORDER, KNOBS, objective_key
from memplan.report import EstimateRequest
from memplan.units import GiB

# These tests reproduce published limits with the point estimate and check the search against it (``fits`` below:
# Report.fits), as they were written before memplan's error band: every search here counts a TIGHT configuration
# whose point estimate fits (allow_tight). The default search, which skips TIGHT, is tests/test_tight.py's.
plan = partial(planner.plan, allow_tight=True)
batch_limit = partial(planner.batch_limit, allow_tight=True)
gpu_limit = partial(planner.gpu_limit, allow_tight=True)
max_micro_batch_size = partial(planner.max_micro_batch_size, allow_tight=True)
max_rollout_batch_size = partial(planner.max_rollout_batch_size, allow_tight=True)
min_gpus = partial(planner.min_gpus, allow_tight=True)

# The ReMax paper's setup (REFERENCE.md; liziniu/ReMax step3_rlhf_finetuning/training_scripts/llama2/
# run_llama2_7b.sh): actor (and PPO's 7B critic) ZeRO-2, reference and reward ZeRO-3 with parameter offload,
# bf16, gradient checkpointing, hybrid engine, per-device batch 1, prompt 256 + answer 256.
REMAX = dict(
    model="meta-llama/Llama-2-7b-hf", gpus="8xA100-40GB", zero_stage=0, actor_zero_stage=2, critic_zero_stage=2,
    ref_zero_stage=3, reward_zero_stage=3, offload_ref=True, offload_reward=True, dtype="bf16",
    gradient_checkpointing=True, rollout_engine="hybrid-engine", micro_batch_size=1, prompt_len=256, gen_len=256,
)

# Requests the search-property tests run on: not fitting (fix), fitting (relax), vLLM, FSDP, one GPU, LoRA.
SEARCHES = {
    "remax-paper-ppo": EstimateRequest(algo="ppo", **REMAX),
    "remax-paper-remax": EstimateRequest(algo="remax", **REMAX),
    # memplan's defaults before zero_stage's auto default (report.auto_zero_stage): unsharded replicas
    "ppo-defaults": EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB", zero_stage=0),
    "grpo-vllm": EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="grpo", gpus="8xH100-80GB",
                                 rollout_engine="vllm", vllm_gpu_memory_utilization=0.9, micro_batch_size=8),
    "ppo-fsdp-batch16": EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB",
                                        engine="fsdp", micro_batch_size=16),
    "dpo-one-gpu": EstimateRequest(model="meta-llama/Llama-3.1-8B", algo="dpo", gpus="1xA100-80GB", seq_len=2048,
                                   micro_batch_size=4),
    "grpo-lora-qwen": EstimateRequest(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="4xL40S", lora_rank=16),
}

# plan() changes only request fields that belong to an allowed knob
KNOB_FIELDS = {
    "zero_stage": {"zero_stage", "actor_zero_stage", "critic_zero_stage", "ref_zero_stage", "reward_zero_stage"},
    "offload": {"offload"}, "offload_ref": {"offload_ref"}, "offload_reward": {"offload_reward"},
    "gradient_checkpointing": {"gradient_checkpointing"}, "lora": {"lora_rank", "ref"},
    "micro_batch_size": {"micro_batch_size"}, "tp": {"tp"}, "placement": {"placement"},
    "vllm_gpu_memory_utilization": {"vllm_gpu_memory_utilization"},
}


def fits(request: EstimateRequest) -> bool:
    """GPU memory and host RAM, by the estimator itself; an invalid request does not fit."""
    try:
        report = memplan.estimate(EstimateRequest.model_validate(request.model_dump()))
    except InputError:
        return False
    return report.fits and report.host_fits


# --- 1. The ReMax result ------------------------------------------------------------------------------------

def test_remax_headline_ppo_does_not_fit_remax_does():
    # ReMax paper (arXiv 2310.10505, v1/v2): on 8×A100-40GB in this setup PPO runs out of memory, ReMax trains
    ppo = memplan.estimate(EstimateRequest(algo="ppo", **REMAX))
    remax = memplan.estimate(EstimateRequest(algo="remax", **REMAX))
    print(f"\n8xA100-40GB, no actor offload: PPO {ppo.peak_bytes_per_gpu / GiB:.2f} GiB, "
          f"ReMax {remax.peak_bytes_per_gpu / GiB:.2f} GiB of {ppo.capacity_bytes / GiB:.2f}")
    assert not ppo.fits
    assert remax.fits and remax.host_fits
    # later versions of the paper: ReMax needs ~46 % less GPU memory than PPO at 7B (setting not stated:
    # tolerance ±11 points)
    saving = 1 - remax.peak_bytes_per_gpu / ppo.peak_bytes_per_gpu
    assert 0.35 < saving < 0.57, saving


def test_remax_headline_with_actor_offload_both_ways():
    # The paper's script passes --offload; its claim does not say whether the OOM run had it (REFERENCE.md:
    # model both). With the actor's optimizer on the CPU memplan predicts that PPO fits as well, so the
    # reported OOM matches the run without --offload (see the test above). ReMax still needs less. The hybrid
    # engine's workspace and DeepSpeed-Chat's make-experience (tests/test_dschat.py) raise PPO from 27.87 to
    # 28.83 GiB of 39.59 at batch 1 (2026-11-23): still far from running out.
    ppo = memplan.estimate(EstimateRequest(algo="ppo", offload="optimizer", **REMAX))
    remax = memplan.estimate(EstimateRequest(algo="remax", offload="optimizer", **REMAX))
    print(f"\n8xA100-40GB, --offload: PPO {ppo.peak_bytes_per_gpu / GiB:.2f} GiB (fits: {ppo.fits}), "
          f"ReMax {remax.peak_bytes_per_gpu / GiB:.2f} GiB; host {ppo.host_bytes_per_node / GiB:.0f} vs "
          f"{remax.host_bytes_per_node / GiB:.0f} GiB per node")
    assert remax.peak_bytes_per_gpu < ppo.peak_bytes_per_gpu
    assert remax.host_bytes_per_node < ppo.host_bytes_per_node  # no critic: no critic optimizer on the host


def test_plan_names_the_cheapest_change_for_ppo():
    request = EstimateRequest(algo="ppo", **REMAX)
    report = plan(request)
    assert report.mode == "fix" and report.fits_any and not report.as_given.fits
    best = report.candidates[0]
    print(f"\ncheapest change for PPO: {best.changes} → {best.peak_bytes_per_gpu / GiB:.2f} GiB")
    assert best.changes and fits(best.request)
    # minimal: undoing any one of its changes does not fit
    for field, (given, _) in best.changes.items():
        assert not fits(best.request.model_copy(update={field: given})), field
    # nothing listed ranks before it: the first is the minimum of the objective (fastest, cost breaking ties)
    assert objective_key(best, "fastest") == min(objective_key(c, "fastest") for c in report.candidates)


# liziniu/ReMax README (commit 536ba49, 2023-12-16), "Results of tuning Llama2-7B with A100-80GB GPUs" (gradient
# checkpointing and ZeRO-2 for the LLM; ZeRO-3 and offload for reward and reference): maximum batch size per GPU
README_MAX_BATCH = [
    ("1xA100-80GB", "optimizer", "ppo", 32),
    ("1xA100-80GB", "optimizer", "remax", 42),
    ("4xA100-80GB", "optimizer", "ppo", 30),
    ("4xA100-80GB", "optimizer", "remax", 40),
    ("4xA100-80GB", "none", "remax", 26),
]
MAX_BATCH_TOLERANCE = 1.7
"""memplan's largest batch may exceed the measured one by up to this factor. With the hybrid engine's terms
(tests/test_dschat.py) memplan charges 1.05 GiB (PPO) and 1.23 GiB (ReMax) per 512-token sequence; the two
README rows on one GPU imply ~1.35 GiB each plus ~10 GiB of batch-independent memory memplan does not see
(allocator fragmentation with multi-GB [b, s, V] blocks, NCCL, kernel scratch; ../notes/research_dschat.md).
Measured 2026-11-23: 49/32 = 1.53, 52/42 = 1.24, 49/30 = 1.63, 52/40 = 1.30, 37/26 = 1.42 (the bound was set
after measuring; before these terms memplan answered 207 and 260, ~6×). memplan never answers less than
measured: it omits memory, it does not invent it."""


@pytest.mark.parametrize(("gpus", "offload", "algo", "published"), README_MAX_BATCH,
                         ids=[f"{g}-{o}-{a}" for g, o, a, _ in README_MAX_BATCH])
def test_remax_readme_max_batch(gpus, offload, algo, published):
    n = max_micro_batch_size(EstimateRequest(algo=algo, **dict(REMAX, gpus=gpus, offload=offload)))
    print(f"\n{gpus} offload={offload} {algo}: memplan {n}, published {published} ({n / published:.2f}×)")
    assert published <= n <= MAX_BATCH_TOLERANCE * published


@pytest.mark.parametrize(("gpus", "published"), [("1xA100-80GB", (32, 42)), ("4xA100-80GB", (30, 40))])
def test_remax_max_batch_larger_than_ppo(gpus, published):
    request = dict(REMAX, gpus=gpus, offload="optimizer")
    ppo = max_micro_batch_size(EstimateRequest(algo="ppo", **request))
    remax = max_micro_batch_size(EstimateRequest(algo="remax", **request))
    print(f"\n{gpus} offload: max batch per GPU PPO {ppo}, ReMax {remax} (ratio {remax / ppo:.2f}); "
          f"published {published[0]} vs {published[1]} (ratio {published[1] / published[0]:.2f})")
    assert ppo is not None and remax is not None
    assert remax > ppo  # no critic: more of the GPU goes to sequences


@pytest.mark.xfail(strict=True, reason="known disagreement: the README's ratio is 1.31 (1 GPU) and 1.33 (4 GPUs); "
                   "memplan's is 52/49 = 1.06 — ReMax's make-experience keeps five fp32 [s, V] temporaries "
                   "(312.5 MiB/seq) against PPO's one log-softmax and its copy (125 MiB/seq), so memplan charges "
                   "ReMax 1.23 and PPO 1.05 GiB per sequence; the README's rows imply about 1.35 GiB for both "
                   "(measured 2026-11-23; before the hybrid-engine terms: 260/207 = 1.26)")
@pytest.mark.parametrize(("gpus", "published"), [("1xA100-80GB", (32, 42)), ("4xA100-80GB", (30, 40))])
def test_remax_max_batch_ratio_as_published(gpus, published):
    request = dict(REMAX, gpus=gpus, offload="optimizer")
    ppo = max_micro_batch_size(EstimateRequest(algo="ppo", **request))
    remax = max_micro_batch_size(EstimateRequest(algo="remax", **request))
    assert remax / ppo > 1.2


def test_remax_readme_ppo_oom_on_4_a100_80gb_without_offload():
    # the ReMax README: PPO out of memory on 4×A100-80GB without offload (ReMax 26 per GPU). At batch 1 memplan
    # says 83.1 GiB of 79.15 since it counts the hybrid engine's fused q/k/v and up/gate copies beside ZeRO-2's
    # flat buffer (8.38 GiB at Llama-2-7B, formulas.hybrid_engine_fused_weight_bytes); 74.76 GiB before them
    assert not fits(EstimateRequest(algo="ppo", **dict(REMAX, gpus="4xA100-80GB")))


# --- 2. DeepSpeed-Chat's single-GPU limits -----------------------------------------------------------------

OPT_SIZES = ["facebook/opt-1.3b", "facebook/opt-2.7b", "facebook/opt-6.7b", "facebook/opt-13b", "facebook/opt-30b"]


def dschat_single_gpu(actor: str, gpu: str) -> EstimateRequest:
    """DeepSpeed-Chat's single-GPU step-3 recipe (microsoft/DeepSpeedExamples, applications/DeepSpeed-Chat/
    training/step3_rlhf_finetuning/training_scripts/single_gpu/run_6.7b.sh): --actor_zero_stage 0
    --critic_zero_stage 0, --actor_lora_dim 128 (no --only_optimize_lora: DS-Chat's LinearLayer_LoRA freezes
    the adapted weights, embeddings and norms stay trainable; memplan trains the adapters only),
    --actor_gradient_checkpointing --critic_gradient_checkpointing, --enable_hybrid_engine, 8 prompts per
    generation and per training micro batch, --max_prompt_seq_len 256 --max_answer_seq_len 256, no offload
    (${OFFLOAD} is unset). fp16 (DS-Chat's get_train_ds_config). Critic and reward: OPT-350M; the reference is
    a separate frozen copy of the actor and the reward model runs at ZeRO-0 (rlhf_engine: stage 0 unless 3).
    """
    return EstimateRequest(
        model=actor, algo="ppo", gpus=f"1x{gpu}", critic_model="facebook/opt-350m", reward_model="facebook/opt-350m",
        zero_stage=0, lora_rank=128, ref="separate", gradient_checkpointing=True, rollout_engine="hybrid-engine",
        micro_batch_size=8, prompt_len=256, gen_len=256, dtype="fp16",
    )


# The knobs the script sets, which the planner may use (the batch down to 1)
DSCHAT_KNOBS = {"micro_batch_size", "gradient_checkpointing", "lora"}


@pytest.mark.parametrize(
    ("gpu", "published"),
    [
        # DeepSpeed blog, blogs/deepspeed-chat/README.md, "Table 3. Max Model Size Supported by DeepSpeed-HE on a
        # Single GPU": V100 32G OPT-2.7B, A6000 48G OPT-6.7B, A100 40G OPT-6.7B, A100 80G OPT-13.2B
        ("V100-32GB", "facebook/opt-2.7b"),
        ("A6000", "facebook/opt-6.7b"),
        ("A100-40GB", "facebook/opt-6.7b"),
        ("A100-80GB", "facebook/opt-13b"),
    ],
)
def test_deepspeed_chat_largest_actor_on_one_gpu(gpu, published):
    fitting = [m for m in OPT_SIZES if plan(dschat_single_gpu(m, gpu), allow=DSCHAT_KNOBS).fits_any]
    largest = fitting[-1] if fitting else None
    peaks = {m.split("-")[-1]: round(memplan.estimate(dschat_single_gpu(m, gpu)).peak_bytes_per_gpu / GiB, 1)
             for m in OPT_SIZES}
    print(f"\n{gpu}: largest OPT that fits {largest} (published {published}); peaks at batch 8 (GiB): {peaks}")
    assert largest == published
    assert fitting == OPT_SIZES[: OPT_SIZES.index(published) + 1]  # every smaller one fits too


@pytest.mark.parametrize(
    ("gpu", "published"),
    [
        # memplan 2026-11-23 (fp16: DeepSpeed's FP16_Optimizer at ZeRO-0, fp32 gradient copies only in the step)
        ("V100-32GB", "facebook/opt-2.7b"),  # 21.2 GiB of 31.75 at batch 8 (largest batch 21)
        ("A6000", "facebook/opt-6.7b"),  # 39.2 of 47.54 (largest batch 16)
        ("A100-40GB", "facebook/opt-6.7b"),  # 39.2 of 39.59: batch 8 is the largest that fits
        ("A100-80GB", "facebook/opt-13b"),  # 67.9 of 79.15 (largest batch 15)
    ],
)
def test_deepspeed_chat_single_gpu_script_at_batch_8(gpu, published):
    # the script itself (8 prompts per generation and per training micro batch), not only its smallest batch
    assert fits(dschat_single_gpu(published, gpu))


# --- 3. The search itself ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SEARCHES))
def test_every_candidate_fits_and_is_ranked_by_the_objective(name):
    # the issue: the lexicographic cost order goes; it only breaks ties of the estimated time (fastest, default)
    request = SEARCHES[name]
    report = plan(request)
    assert report.as_given.peak_bytes_per_gpu == memplan.estimate(request).peak_bytes_per_gpu
    assert report.mode == ("relax" if fits(request) else "fix")
    assert report.cost_order == list(COST_ORDER) and report.objective == "fastest"
    assert report.fits_any, name
    keys = [objective_key(c, "fastest") for c in report.candidates]
    assert keys == sorted(keys)
    for c in report.candidates:
        t = memplan.step_time(c.request)  # the time beside the memory is memplan.step_time's
        assert (c.seconds_per_step, c.prompts_per_step) == (t.seconds_per_step, t.prompts_per_step)
        assert list(c.cost) == list(COST_ORDER)
        again = memplan.estimate(EstimateRequest.model_validate(c.request.model_dump()))  # re-estimated
        assert again.fits and again.host_fits and c.fits
        assert (again.peak_bytes_per_gpu, again.headroom_bytes) == (c.peak_bytes_per_gpu, c.headroom_bytes)
        # the diff is exactly what changed
        assert {f: (getattr(request, f), getattr(c.request, f)) for f in EstimateRequest.model_fields
                if getattr(request, f) != getattr(c.request, f)} == c.changes


def _seconds_per_prompt(request: EstimateRequest) -> float:
    t = memplan.step_time(request)
    return t.seconds_per_step / t.prompts_per_step


@pytest.mark.parametrize("name", ["remax-paper-ppo", "grpo-vllm", "dpo-one-gpu"])
def test_fastest_is_the_order_of_the_hand_computed_times(name):
    # expected order worked outside the planner: each candidate's request re-timed with memplan.step_time,
    # seconds per prompt (a smaller micro batch takes shorter steps but more of them), LoRA for full
    # fine-tuning last, the stated cost breaking ties
    report = plan(SEARCHES[name])
    by_hand = sorted(report.candidates, key=lambda c: (c.cost["method_change"], _seconds_per_prompt(c.request),
                                                       c.cost_key()))
    assert [c.request for c in report.candidates] == [c.request for c in by_hand]


def test_fastest_pair_checked_by_hand_cpu_offload_vs_zero3():
    # ReMax in the paper's setup on 8×A100-40GB at micro batch 4 (TIGHT: 38.21 GiB of 39.49, the training band's
    # high end over capacity; from micro batch 6 the offload needs a smaller batch too): two fixes on the same GPUs,
    # each alone,
    # the actor's optimizer on the CPU, or the actor under ZeRO-3. By memplan.step_time's blocks: ZeRO-3 adds
    # two NVLink gathers of the actor to generate (sampled and greedy passes) and a gather-bound backward; the
    # offload adds gradients over PCIe and the CPU optimizer step (~0.8 s, 8 ranks sharing a node's DRAM).
    # Under ZeRO-3 the hybrid engine also copies q, k, v and up/gate into merged buffers on every decode token
    # (DeepSpeed ds_attention.py::_merge_qkv, ds_mlp.py::_merge_inter_w; launches.hybrid_engine_merge_bytes):
    # the CPU offload is the faster fix, and the planner lists it first.
    report = planner.plan(SEARCHES["remax-paper-remax"].model_copy(update={"micro_batch_size": 4}))
    zero3, offload = (next(c for c in report.candidates if f in c.changes) for f in ("actor_zero_stage", "offload"))
    assert set(zero3.changes) == {"actor_zero_stage"} and set(offload.changes) == {"offload"}
    t3, toff = memplan.step_time(zero3.request), memplan.step_time(offload.request)

    def block(t, words: str) -> float:
        return sum(i.seconds for p in t.phases for i in p.items if words in i.what)

    zero3_extra = block(t3, "gather the sharded actor") + block(t3, "forward + backward") - block(toff, "forward + backward")
    # ZeRO-3 also leaves the hybrid engine's q, k, v and up/gate unfused (5 more kernels per layer per decode token)
    # and merges them per token (memplan/timing/launches.py)
    zero3_extra += block(t3, "decode") - block(toff, "decode")
    offload_extra = block(toff, "CPU optimizer step") + block(toff, "gradients to the CPU") + block(
        toff, "all-gather the updated weights") - block(t3, "optimizer step on the GPU")
    assert offload_extra < zero3_extra
    assert toff.seconds_per_step - t3.seconds_per_step == pytest.approx(offload_extra - zero3_extra, rel=1e-9)
    assert report.candidates.index(offload) < report.candidates.index(zero3)


def test_lora_for_full_fine_tuning_ranks_last_even_when_faster():
    report = plan(SEARCHES["remax-paper-ppo"])
    methods = [c.cost["method_change"] for c in report.candidates]
    assert methods == sorted(methods) and 1 in methods
    full, lora = (min(c.seconds_per_prompt() for c in report.candidates if c.cost["method_change"] == m)
                  for m in (0, 1))
    assert lora < full  # the time model finds LoRA faster; it is still listed after every full fine-tuning


def test_dataset_wall_time_gpu_hours_and_price_by_hand():
    request = SEARCHES["remax-paper-remax"]
    report = plan(request, dataset_samples=45000, price_per_gpu_hour=2.0, objective="cheapest")
    assert (report.objective, report.dataset_samples, report.price_per_gpu_hour) == ("cheapest", 45000, 2.0)
    for c in report.candidates:
        t = memplan.step_time(c.request)
        steps = -(-45000 // t.prompts_per_step)  # whole steps
        assert c.wall_seconds == pytest.approx(steps * t.seconds_per_step, rel=1e-12)
        assert c.gpu_hours == pytest.approx(c.wall_seconds * 8 / 3600, rel=1e-12)  # 8×A100-40GB
        assert c.price == pytest.approx(c.gpu_hours * 2.0, rel=1e-12)
    keys = [(c.cost["method_change"], c.gpu_hours, c.cost_key()) for c in report.candidates]
    assert keys == sorted(keys)


def test_objective_bad_input_names_the_field():
    request = SEARCHES["remax-paper-remax"]
    for kwargs, field in (({"objective": "slowest"}, "objective"), ({"dataset_samples": 0}, "dataset_samples"),
                          ({"price_per_gpu_hour": -1.0}, "price_per_gpu_hour")):
        with pytest.raises(InputError) as err:
            plan(request, **kwargs)
        assert err.value.field == field


@pytest.mark.parametrize("allow", [{"offload"}, {"zero_stage"}, {"tp", "gradient_checkpointing"},
                                   {"lora", "micro_batch_size"}, {"placement", "zero_stage"}])
def test_plan_changes_only_allowed_knobs(allow):
    request = EstimateRequest(algo="ppo", **REMAX)
    allowed_fields = set().union(*(KNOB_FIELDS[k] for k in allow))
    report = plan(request, allow=allow)
    for c in report.candidates:
        assert set(c.changes) <= allowed_fields, (allow, c.changes)
        assert c.fits == fits(c.request)


def test_no_candidate_is_a_superset_of_another():
    # minimal changes: no listed configuration makes the same changes as another and more
    for request in SEARCHES.values():
        report = plan(request)
        diffs = [set(c.changes.items()) for c in report.candidates]
        for i, a in enumerate(diffs):
            assert not any(b < a for j, b in enumerate(diffs) if j != i), a


def test_nothing_fits_says_so_and_gives_the_closest():
    request = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="1xT4")
    report = plan(request, allow={"gradient_checkpointing", "micro_batch_size"})
    assert not report.fits_any
    assert len(report.candidates) == 1
    closest = report.candidates[0]
    assert not closest.fits and closest.peak_bytes_per_gpu <= report.as_given.peak_bytes_per_gpu
    assert any("nothing fits" in note for note in report.notes)
    # the closest is no worse than any single allowed change
    assert closest.peak_bytes_per_gpu <= memplan.estimate(request, gradient_checkpointing=True).peak_bytes_per_gpu
    # and the same request with every knob does fit (ZeRO-3 with everything on the CPU)
    assert plan(request).fits_any


def test_plan_respects_host_ram():
    # 1×A100-80GB, offloaded Adam: ~12 bytes per parameter on the host (REFERENCE.md: ~12–16), far over 128 GiB
    request = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="1xA100-80GB", zero_stage=2,
                              offload="optimizer", host_ram_bytes_per_node=128 * GiB)
    given = memplan.estimate(request)
    assert given.gpu_fits and not given.host_fits and not given.fits  # one verdict: the host RAM is part of it
    report = plan(request)
    assert report.mode == "fix" and not report.as_given.fits and not report.as_given.host_fits
    assert any("host RAM" in note for note in report.notes)
    for c in report.candidates:
        assert c.host_fits and c.host_bytes_per_node <= request.host_ram_bytes_per_node
        assert c.request.offload == "none"  # no optimizer offload fits in 128 GiB
    # the ReMax setup with 16 GiB of host RAM: its offloaded reference and reward (~25 GiB) must come back
    small = EstimateRequest(algo="remax", **dict(REMAX, host_ram_bytes_per_node=16 * GiB))
    report = plan(small)
    assert report.fits_any
    assert all(c.host_bytes_per_node <= 16 * GiB and fits(c.request) for c in report.candidates)


@pytest.mark.parametrize("name", ["remax-paper-remax", "ppo-defaults", "dpo-one-gpu", "grpo-lora-qwen"])
def test_max_batch_is_the_boundary(name):
    request = SEARCHES[name]
    n = max_micro_batch_size(request)
    if n is None:
        assert not fits(request.model_copy(update={"micro_batch_size": 1}))
        return
    assert fits(request.model_copy(update={"micro_batch_size": n}))
    assert not fits(request.model_copy(update={"micro_batch_size": n + 1}))
    limit = batch_limit(request)
    assert limit.max_micro_batch_size == n and limit.found
    assert limit.at_limit.fits and limit.at_limit.request.micro_batch_size == n
    assert not limit.past_limit.fits and limit.past_limit.request.micro_batch_size == n + 1


def test_max_rollout_batch_is_the_boundary():
    request = EstimateRequest(algo="remax", **dict(REMAX, gpus="1xA100-80GB", offload="optimizer"))
    n = max_rollout_batch_size(request)
    assert n is not None and n >= max_micro_batch_size(request)  # the micro batch stays at 1
    assert fits(request.model_copy(update={"rollout_batch_size": n}))
    assert not fits(request.model_copy(update={"rollout_batch_size": n + 1}))
    with pytest.raises(InputError) as err:
        max_rollout_batch_size(request.model_copy(update={"algo": "dpo"}))
    assert err.value.field == "algo"


def _smaller_counts(request: EstimateRequest, n: int) -> list[str]:
    """Every cluster of the same GPU with fewer GPUs that min_gpus may answer: 1, 2, 4, then multiples of 8."""
    gpu = memplan.estimate(request).gpu
    return [f"{m}x{gpu}" if m <= 8 else f"{m // 8}x8x{gpu}" for m in (1, 2, 4, *range(8, n, 8)) if m < n]


@pytest.mark.parametrize(
    "request_",
    [
        EstimateRequest(algo="ppo", **REMAX),
        EstimateRequest(algo="remax", **REMAX),
        EstimateRequest(model="meta-llama/Llama-2-13b-hf", algo="grpo", gpus="8xH100-80GB", zero_stage=3),
        EstimateRequest(model="meta-llama/Llama-2-70b-hf", algo="ppo", gpus="1xA100-80GB", zero_stage=3),
    ],
    ids=["remax-ppo", "remax-remax", "grpo-13b", "ppo-70b"],
)
def test_min_gpus_is_the_boundary(request_):
    n = min_gpus(request_)
    assert n is not None
    limit = gpu_limit(request_)
    assert limit.min_gpus == n and limit.at_limit.fits
    assert memplan.estimate(limit.at_limit.request).num_gpus == n
    # every smaller count of the same GPU does not fit
    assert not any(fits(request_.model_copy(update={"gpus": g})) for g in _smaller_counts(request_, n))
    if n > 1:
        assert not limit.past_limit.fits


def test_min_gpus_none_when_nothing_shards():
    # ZeRO-0 shards nothing: 70B PPO (~1 TiB of model states) never fits, whatever the count
    request = EstimateRequest(model="meta-llama/Llama-2-70b-hf", algo="ppo", gpus="8xA100-80GB", zero_stage=0)
    limit = gpu_limit(request)
    assert limit.min_gpus is None and not limit.found and not limit.past_limit.fits


def test_plan_is_fast():
    # the issue: a full plan in well under a second. The headline takes ~25 ms on a 2-core CPU
    # (benchmarks/results/bench_plan.md); the widest search here (GRPO with a vLLM fraction) ~0.5 s.
    start = time.perf_counter()
    plan(SEARCHES["remax-paper-ppo"])
    assert time.perf_counter() - start < 0.5
    for name, request in SEARCHES.items():
        start = time.perf_counter()
        report = plan(request)
        assert time.perf_counter() - start < 2.0, (name, report.evaluations)
        assert report.exhaustive, name


def test_bad_input_names_the_field():
    request = SEARCHES["ppo-defaults"]
    with pytest.raises(InputError) as err:
        plan(request, allow={"zero_stage", "bogus"})
    assert err.value.field == "allow" and "bogus" in str(err.value)
    for knob in KNOBS:
        assert knob in str(err.value)
    with pytest.raises(InputError) as err:
        plan(request, max_results=0)
    assert err.value.field == "max_results"
    with pytest.raises(InputError) as err:
        plan(request.model_copy(update={"tp": 3}))
    assert err.value.field == "tp"


def test_compare_algorithms_saving_vs_ppo():
    request = EstimateRequest(algo="ppo", **REMAX)
    result = compare_algorithms(request, ("grpo", "remax", "dpo"))  # PPO not listed: estimated anyway
    ppo = memplan.estimate(request)
    assert result.ppo_peak_bytes_per_gpu == ppo.peak_bytes_per_gpu
    assert [r.algo for r in result.rows] == ["grpo", "remax", "dpo"]
    for row in result.rows:
        # DPO generates nothing: the rollout options go back to their defaults (a DPO request refuses them)
        report = memplan.estimate(for_algorithm(request, row.algo))
        assert row.peak_bytes_per_gpu == report.peak_bytes_per_gpu and row.peak_phase == report.peak_phase
        assert row.saving_vs_ppo_bytes == ppo.peak_bytes_per_gpu - report.peak_bytes_per_gpu
    remax = next(r for r in result.rows if r.algo == "remax")
    assert remax.roles == ["actor", "reference", "reward"]  # ReMax: no critic (REFERENCE.md)


def test_compare_algorithms_step_time_and_speed_vs_ppo():
    # the times are memplan.step_time's on each algorithm's own request; the speed is per prompt:
    # (PPO's seconds per step / its prompts per step) / (this run's seconds per step / its prompts per step)
    request = EstimateRequest(algo="ppo", **REMAX)
    result = compare_algorithms(request, ("grpo", "remax", "dpo"))  # PPO not listed: timed anyway
    ppo = memplan.step_time(request)
    assert result.ppo_seconds_per_step == ppo.seconds_per_step
    for row in result.rows:
        t = memplan.step_time(for_algorithm(request, row.algo))
        assert (row.seconds_per_step, row.prompts_per_step) == (t.seconds_per_step, t.prompts_per_step)
        expected = (ppo.seconds_per_step / ppo.prompts_per_step) / (t.seconds_per_step / t.prompts_per_step)
        assert row.speed_vs_ppo == pytest.approx(expected, rel=1e-12)
    listed = compare_algorithms(request, ("ppo",))
    assert listed.rows[0].speed_vs_ppo == 1.0


def test_compare_reports_carry_step_time_against_ppo_with_the_same_knobs():
    from memplan.comparison import compare_reports

    base = EstimateRequest(algo="ppo", **REMAX)
    requests = [for_algorithm(base, a) for a in ("remax", "grpo")]
    reports = compare_reports(requests, base)
    assert [r.model_dump(exclude={"step_time", "speed_vs_ppo"}) for r in reports] == [
        r.model_dump() for r in memplan.compare(requests)]  # the memory reports unchanged
    ppo = memplan.step_time(base)
    for request, report in zip(requests, reports):
        t = memplan.step_time(request)
        assert report.step_time == t
        expected = (ppo.seconds_per_step / ppo.prompts_per_step) / (t.seconds_per_step / t.prompts_per_step)
        assert report.speed_vs_ppo == pytest.approx(expected, rel=1e-12)
    # without a base: PPO with each request's own knobs (GRPO's request has no reward offload to keep)
    grpo = compare_reports(requests[1:])[0]
    own = memplan.step_time(for_algorithm(requests[1], "ppo"))
    t = grpo.step_time
    expected = (own.seconds_per_step / own.prompts_per_step) / (t.seconds_per_step / t.prompts_per_step)
    assert grpo.speed_vs_ppo == pytest.approx(expected, rel=1e-12)


def test_speed_words():
    from memplan.cli.render import speed

    assert (speed(2.14), speed(1 / 1.1), speed(1.02), speed(None)) == ("2.1× faster", "1.1× slower", "same", "")


def test_planner_imports_no_torch_rich_or_fastapi():
    code = ("import sys, memplan.planner\n"
            "print(sorted(m for m in ('torch', 'rich', 'fastapi', 'typer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
