"""An OpenRLHF launch command for a request: ``python3 -m openrlhf.cli.train_ppo_ray --key value ...``.

The arguments are OpenRLHF 0.11's dotted names (``openrlhf/cli/train_ppo_ray.py``'s ``add_argument`` calls, and
``examples/scripts/train_ppo_ray_hybrid_engine.sh``; OpenRLHF/OpenRLHF 3c3be62, 2026-08-13), the ones
``memplan.frameworks.openrlhf`` reads back:

    request                          OpenRLHF argument
    algo                             --algo.advantage.estimator (ppo → gae, grpo → group_norm, rloo)
    model, critic_model, reward_model
                                     --actor / --critic / --reward .model_name_or_path (a rule reward: a
                                     --reward.remote_url to fill in)
    ref                              --algo.kl.init_coef > 0 loads the reference (GRPO: --algo.kl.use_loss, k3)
    placement, split_groups          --train.colocate_all, or each model on its own GPUs
                                     (--train.colocate_actor_ref, --train.colocate_critic_reward)
    gpus                             --{actor,ref,critic,reward}.num_nodes / .num_gpus_per_node
    zero_stage, offload 'optimizer', idle_offload 'optimizer', offload_ref / offload_reward
                                     --ds.zero_stage, --ds.adam_offload, --ds.enable_sleep, --ref.offload,
                                     --reward.offload
    dtype, attention, gradient_checkpointing, lora_rank, quantize_base 'int4'
                                     --ds.param_dtype, --ds.attn_implementation,
                                     --actor.gradient_checkpointing_enable, --ds.lora.rank, --ds.load_in_4bit
    micro_batch_size, score_micro_batch_size
                                     --train.micro_batch_size, --rollout.micro_batch_size
    rollout_batch_size × actor GPUs, group_size
                                     --rollout.batch_size, --rollout.n_samples_per_prompt (--train.batch_size:
                                     one update per rollout)
    prompt_len + gen_len, gen_len    --data.max_len, --rollout.max_new_tokens
    rollout_engine 'vllm' / 'remote' --vllm.num_engines × --vllm.tensor_parallel_size, colocated (colocate_all) or
                                     not; --vllm.gpu_memory_utilization, --vllm.enable_sleep
"""

from __future__ import annotations

import shlex
from typing import Any

from memplan.emit.common import (Emitted, LaunchFile, check_round_trip, cluster_of, effective, model_path, whole,
                                 zero_stage)
from memplan.errors import InputError
from memplan.frameworks.presets import ALGOS
from memplan.report import EstimateRequest

FRAMEWORK = "OpenRLHF"
ESTIMATORS = ALGOS["openrlhf"]  # algorithm → its advantage estimator, as the preset writes it
ATTENTION = {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}
ROLES = ("actor", "ref", "critic", "reward")
HINTS = {
    "engine": "OpenRLHF trains with DeepSpeed",
    "ref_zero_stage": "OpenRLHF runs frozen models at ZeRO-3 only under ZeRO-3, else stage 0 (get_ds_eval_config)",
    "reward_zero_stage": "OpenRLHF runs frozen models at ZeRO-3 only under ZeRO-3, else stage 0 (get_ds_eval_config)",
    "ref": "OpenRLHF loads a separate reference whenever algo.kl.init_coef > 0, LoRA or not",
    "offload": "--ds.adam_offload offloads the optimizer only",
    "logprob_kernel": "OpenRLHF casts every position's logits to fp32 for flash-attn's cross-entropy ('fp32-fused')",
    "processes_per_gpu": "under colocate_all each model and each vLLM worker is a Ray actor (a process) on every GPU",
    "dtype": "--ds.param_dtype takes bf16 or fp16",
    "rollout_engine": "OpenRLHF's vLLM engines are colocated under colocate_all, on GPUs of their own otherwise",
    "gpus": "memplan's OpenRLHF reader counts each model's group with the actor's num_nodes × num_gpus_per_node",
    "offload_ref": "--ref.offload moves the reference to the CPU under ZeRO-3 only",
    "offload_reward": "--reward.offload moves the reward model to the CPU under ZeRO-3 only",
}
DATA = ("--data.prompt_dataset", "OpenRLHF/prompt-collection-v0.1", "--data.input_key", "context_messages",
        "--data.apply_chat_template")
REWARD_URL = "http://localhost:5000/get_reward"
NOTES = ("fill in: --data.prompt_dataset / --data.input_key (your prompts; the example's data set is written), "
         f"and for a rule reward --reward.remote_url (a reward server; {REWARD_URL} is a placeholder)",)


def _groups(request: EstimateRequest, active: list[str]) -> int:
    """GPU groups under split placement: one per model, a pair in ``split_groups`` sharing one."""
    pairs = {frozenset(g) for g in request.split_groups if set(g) <= set(active) and len(set(g)) == 2}
    return max(1, len(active) - len(pairs))


def arguments(request: EstimateRequest) -> list[tuple[str, Any]]:
    """(flag, value) pairs; value None for a store_true flag."""
    algo = request.algo
    if algo not in ESTIMATORS:
        raise InputError("algo", f"OpenRLHF's train_ppo_ray runs {', '.join(ESTIMATORS)} (group_norm for GRPO); "
                         f"{algo!r} is not one", algo)
    eff = effective(request)
    if algo in ("grpo", "rloo") and eff.group < 2:
        raise InputError("group_size", f"OpenRLHF's {ESTIMATORS[algo]} estimator needs n_samples_per_prompt > 1",
                         eff.group)
    nodes, per_node, _gpu = cluster_of(request)
    world = nodes * per_node
    model = model_path(request.model, "model", FRAMEWORK)
    active = ["actor"] + (["critic"] if algo == "ppo" else []) + (["reference"] if eff.ref != "none" else []) \
        + (["reward"] if eff.reward == "model" else [])
    split = request.placement == "split"
    groups = _groups(request, active) if split else 1
    actor_gpus = whole(world, groups, "gpus", FRAMEWORK, f"the {world} GPUs to split evenly over {groups} groups")
    group_nodes, group_per_node = (actor_gpus // per_node, per_node) if actor_gpus >= per_node else (1, actor_gpus)
    args: list[tuple[str, Any]] = []
    for role in ROLES:
        args += [(f"--{role}.num_nodes", group_nodes), (f"--{role}.num_gpus_per_node", group_per_node)]
    vllm = request.rollout_engine in ("vllm", "remote")
    if vllm:
        engines = whole(actor_gpus, request.vllm_tensor_parallel_size, "vllm_tensor_parallel_size", FRAMEWORK,
                        f"vllm.num_engines × vllm.tensor_parallel_size = the actor's {actor_gpus} GPUs")
        args += [("--vllm.num_engines", engines), ("--vllm.tensor_parallel_size", request.vllm_tensor_parallel_size)]
    if not split and request.rollout_engine != "remote":
        args.append(("--train.colocate_all", None))
        if vllm:
            args.append(("--vllm.gpu_memory_utilization", request.vllm_gpu_memory_utilization))
            if request.vllm_sleep_mode:
                args.append(("--vllm.enable_sleep", None))
        if request.idle_offload != "none":
            args.append(("--ds.enable_sleep", None))
    for group in request.split_groups if split else ():
        if set(group) == {"actor", "reference"}:
            args.append(("--train.colocate_actor_ref", None))
        elif set(group) == {"critic", "reward"}:
            args.append(("--train.colocate_critic_reward", None))
    args.append(("--actor.model_name_or_path", model))
    if eff.reward == "model":
        args.append(("--reward.model_name_or_path", model if request.reward_model is None
                     else model_path(request.reward_model, "reward_model", FRAMEWORK)))
    else:
        args.append(("--reward.remote_url", REWARD_URL))
    if algo == "ppo":
        args.append(("--critic.model_name_or_path", model if request.critic_model is None
                     else model_path(request.critic_model, "critic_model", FRAMEWORK)))
    args += _batches(request, eff, actor_gpus)
    args += _deepspeed(request, eff)
    args.append(("--algo.advantage.estimator", ESTIMATORS[algo]))
    if eff.ref == "none":
        args.append(("--algo.kl.init_coef", 0))
    elif algo == "ppo":
        args.append(("--algo.kl.init_coef", 0.01))
    else:  # GRPO's KL loss: OpenRLHF still loads the reference only when init_coef > 0
        args += [("--algo.kl.use_loss", None), ("--algo.kl.estimator", "k3"), ("--algo.kl.init_coef", 0.001)]
    if "update" in getattr(request, "entropy", "none"):
        args.append(("--actor.entropy_coef", 0.01))
    return args


def _batches(request: EstimateRequest, eff: Any, actor_gpus: int) -> list[tuple[str, Any]]:
    micro, group = request.micro_batch_size, eff.group
    sequences = eff.prompts * group
    whole(sequences, micro, "micro_batch_size", FRAMEWORK, f"train.batch_size (one update per rollout: "
          f"{sequences} sequences per GPU) to be a multiple of train.micro_batch_size {micro} per GPU (DeepSpeed's "
          "gradient accumulation)")
    if eff.score_micro > sequences:
        raise InputError("score_micro_batch_size", f"OpenRLHF needs rollout.micro_batch_size ≤ the {sequences} "
                         "sequences a GPU scores (train_ppo_ray's sample-batch assertion)", eff.score_micro)
    out: list[tuple[str, Any]] = [
        ("--train.micro_batch_size", micro), ("--train.batch_size", sequences * actor_gpus),
        ("--rollout.micro_batch_size", eff.score_micro), ("--rollout.batch_size", eff.prompts * actor_gpus),
        ("--rollout.n_samples_per_prompt", group),
        ("--data.max_len", request.prompt_len + request.gen_len), ("--rollout.max_new_tokens", request.gen_len),
    ]
    if getattr(request, "packing", False):
        out.append(("--ds.packing_samples", None))
    if getattr(request, "sequence_parallel", 1) > 1 and getattr(request, "sequence_parallel_mode", "") == "ring":
        out += [("--ds.ring_attn_size", request.sequence_parallel),
                ("--ds.ring_attn_head_stride", request.ring_head_stride)]  # OpenRLHF's ring attention group
    cap = getattr(request, "max_tokens_per_gpu", None)
    if cap:
        out += [("--train.dynamic_batch_enable", None), ("--train.max_tokens_per_gpu", cap)]
        score_cap = getattr(request, "score_max_tokens_per_gpu", None)
        if score_cap:
            out.append(("--rollout.max_tokens_per_gpu", score_cap))
    return out


def _deepspeed(request: EstimateRequest, eff: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("--ds.zero_stage", zero_stage(request))]
    if request.dtype in ("bf16", "fp16"):
        out.append(("--ds.param_dtype", request.dtype))
    out.append(("--ds.attn_implementation", ATTENTION[request.attention]))
    if request.offload != "none":
        out.append(("--ds.adam_offload", None))
    if request.gradient_checkpointing:
        out.append(("--actor.gradient_checkpointing_enable", None))
    if request.lora_rank:
        out += [("--ds.lora.rank", request.lora_rank), ("--ds.lora.target_modules", "all-linear")]
        if request.quantize_base == "int4":
            out.append(("--ds.load_in_4bit", None))
    if request.offload_ref and eff.ref != "none":
        out.append(("--ref.offload", None))
    if request.offload_reward and eff.reward == "model":
        out.append(("--reward.offload", None))
    return out


def command(request: EstimateRequest) -> str:
    """The launch command's text."""
    _nodes, _per_node, gpu = cluster_of(request)
    pairs = arguments(request)
    lines = [f"   {flag}" + ("" if value is None else f" {shlex.quote(str(value))}") + " \\" for flag, value in pairs]
    lines += ["   " + " ".join(DATA[i:i + 2]) + " \\" for i in (0, 2)] + [f"   {DATA[4]}"]
    return "\n".join([
        "#!/usr/bin/env bash",
        "# OpenRLHF launch command written by memplan (memplan plan --emit openrlhf)",
        f"# reads back as the request memplan estimated: memplan estimate --openrlhf run_openrlhf.sh --gpus {gpu}",
        f"# {NOTES[0]}",
        "set -x",
        "",
        "python3 -m openrlhf.cli.train_ppo_ray \\",
        *lines,
        "",
    ])


def emit(request: EstimateRequest) -> Emitted:
    """The OpenRLHF command for ``request``, read back with ``memplan.frameworks.openrlhf`` to the same run, else
    an ``InputError`` naming the field OpenRLHF cannot carry."""
    from memplan.frameworks import openrlhf as reader

    text = command(request)
    _nodes, _per_node, gpu = cluster_of(request)
    check_round_trip(FRAMEWORK, request, reader.fields(reader.read(text), gpu).fields, HINTS)
    return Emitted(target="openrlhf", files=(LaunchFile(name="run_openrlhf.sh", text=text),),
                   read_back=f"memplan estimate --openrlhf run_openrlhf.sh --gpus {gpu}", notes=NOTES)
