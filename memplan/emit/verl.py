"""A verl launch script for a request: ``python3 -m verl.trainer.main_ppo key=value ...`` (Hydra overrides).

The keys are verl's (``verl/trainer/config/_generated_ppo_trainer.yaml`` and ``examples/grpo_trainer/
run_qwen2-7b.sh``, volcengine/verl b178a3c, 2026-01-29), the ones ``memplan.frameworks.verl`` reads back:

    request                          verl override (A = actor_rollout_ref)
    algo                             algorithm.adv_estimator (ppo → gae; grpo, rloo, remax)
    model, critic_model, reward_model
                                     A.model.path, critic.model.path, reward_model.enable / .model.path
    engine 'fsdp', zero_stage 3 / 2  A.actor.strategy fsdp2, fsdp_config.reshard_after_forward true / false
    hybrid_shard                     fsdp_config.fsdp_size = GPUs per node
    offload 'optimizer+params'       fsdp_config.offload_policy (FSDP2's CPUOffloadPolicy)
    idle_offload                     fsdp_config.param_offload / optimizer_offload
    dtype, master_weights            fsdp_config.dtype, fsdp_config.model_dtype (fp32 masters, or bf16)
    gradient_checkpointing, lora_rank
                                     A.model.enable_gradient_checkpointing, A.model.lora_rank / target_modules
    ref                              A.actor.use_kl_loss (the reference's parameters offloaded: verl's
                                     forward-only workers)
    micro_batch_size                 A.actor.ppo_micro_batch_size_per_gpu (critic.ppo_micro_batch_size_per_gpu)
    score_micro_batch_size           A.rollout / A.ref log_prob_micro_batch_size_per_gpu,
                                     critic.forward_micro_batch_size_per_gpu
    rollout_batch_size × GPUs        data.train_batch_size (= ppo_mini_batch_size: one update per rollout)
    group_size, prompt_len, gen_len  A.rollout.n, data.max_prompt_length, data.max_response_length
    rollout_engine 'vllm' / 'hf'     A.rollout.name, .gpu_memory_utilization, .tensor_model_parallel_size,
                                     .max_num_batched_tokens, .checkpoint_engine.update_weights_bucket_megabytes
    gpus                             trainer.nnodes, trainer.n_gpus_per_node
"""

from __future__ import annotations

import shlex
from typing import Any

from memplan.emit.common import (Emitted, LaunchFile, check_round_trip, cluster_of, effective, model_path, whole,
                                 zero_stage)
from memplan.errors import InputError
from memplan.frameworks.presets import ALGOS
from memplan.report import EstimateRequest

FRAMEWORK = "verl"
A = "actor_rollout_ref"
ESTIMATORS = ALGOS["verl"]  # algorithm → its advantage estimator, as the preset writes it
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
HINTS = {
    "engine": "verl's workers train with FSDP (actor.strategy fsdp / fsdp2)",
    "zero_stage": "verl's FSDP reshards after forward (3) or keeps the gathered weights (2)",
    "offload": "verl's offload_policy moves parameters, gradients and optimizer states together",
    "dtype": "memplan reads fsdp_config.dtype bfloat16 or float16",
    "logprob_kernel": "verl takes log-probs with flash-attn's fused cross-entropy (logprobs_from_logits)",
    "processes_per_gpu": "verl's vLLM workers are processes of their own beside the FSDP worker",
    "weight_sync_bucket_mb": "verl sends the weights to vLLM through its checkpoint-engine bucket",
    "vllm_max_num_batched_tokens": "rollout.max_num_batched_tokens (8192 by default)",
    "vllm_sleep_mode": "verl frees vLLM's memory outside rollout (free_cache_engine)",
    "offload_ref": "verl keeps a separate reference's parameters on the CPU (CPUOffload, forward-only workers)",
    "rollout_engine": "verl generates with a colocated vLLM (or SGLang) or HF",
    "lora_targets": "memplan's verl reader takes target_modules other than all-linear as all-linear",
    "placement": "verl's hybrid engine puts every role on every GPU",
    "attention": "memplan's verl reader leaves attention at sdpa",
    "entropy": "verl's actor takes the entropy of its old log-probs unless LoRA (compute_log_prob's "
               "calculate_entropy), and in the update when entropy_coeff ≠ 0",
    "fsdp_version": "verl's strategy fsdp is FSDP1, fsdp2 FSDP2",
}
DATA_NOTE = ("data.train_files / data.val_files: your parquet files (verl's examples/data_preprocess writes them); "
             "a rule reward needs custom_reward_function.path (or one of verl's built-in data sources)")


def overrides(request: EstimateRequest) -> dict[str, Any]:
    """The Hydra overrides of ``request``'s verl run, in the order a verl example lists them."""
    if request.algo not in ESTIMATORS:
        raise InputError("algo", f"verl's main_ppo runs {', '.join(ESTIMATORS)}; {request.algo!r} is another "
                         "trainer (verl.trainer.fsdp_sft_trainer for SFT, not written here)", request.algo)
    nodes, per_node, _gpu = cluster_of(request)
    world = nodes * per_node
    eff = effective(request)
    model = model_path(request.model, "model", FRAMEWORK)
    micro, n = request.micro_batch_size, eff.group
    if not getattr(request, "max_tokens_per_gpu", None):  # use_dynamic_bsz: verl packs micro batches by tokens
        whole(eff.prompts * n, micro, "micro_batch_size", FRAMEWORK,
              f"the sequences per GPU per update (rollout_batch_size {eff.prompts} × rollout.n {n} = "
              f"{eff.prompts * n}, one update per rollout) to be a multiple of ppo_micro_batch_size_per_gpu {micro}")
    o: dict[str, Any] = {"algorithm.adv_estimator": ESTIMATORS[request.algo]}
    o["data.train_files"] = "$HOME/data/train.parquet"
    o["data.val_files"] = "$HOME/data/test.parquet"
    o["data.train_batch_size"] = eff.prompts * world
    o["data.max_prompt_length"], o["data.max_response_length"] = request.prompt_len, request.gen_len
    o[f"{A}.model.path"] = model
    o[f"{A}.model.enable_gradient_checkpointing"] = request.gradient_checkpointing
    if hasattr(request, "packing"):
        o[f"{A}.model.use_remove_padding"] = request.packing
    lora = request.lora_rank
    if lora:
        o[f"{A}.model.lora_rank"] = lora
        o[f"{A}.model.target_modules"] = ("all-linear" if request.lora_targets == "all-linear"
                                          else "[q_proj,k_proj,v_proj,o_proj]")
    strategy = "fsdp" if getattr(request, "fsdp_version", 2) == 1 else "fsdp2"
    o[f"{A}.actor.strategy"] = strategy
    o[f"{A}.actor.ppo_mini_batch_size"] = eff.prompts * world
    o[f"{A}.actor.ppo_micro_batch_size_per_gpu"] = micro
    uses_ref = eff.ref != "none"
    o[f"{A}.actor.use_kl_loss"] = uses_ref
    if uses_ref:
        o[f"{A}.actor.kl_loss_coef"], o[f"{A}.actor.kl_loss_type"] = 0.001, "low_var_kl"
    entropy = getattr(request, "entropy", "none")
    o[f"{A}.actor.entropy_coeff"] = 0.001 if "update" in entropy else 0
    kernel = getattr(request, "entropy_kernel", "compiled")
    if kernel == "fp32-chunked":
        o[f"{A}.actor.entropy_from_logits_with_chunking"] = True
    elif kernel == "eager":
        o[f"{A}.actor.use_torch_compile"] = False
    o.update(_tokens(request, eff.score_micro))
    sharding = _fsdp(request, per_node, world, eff.master_weights)
    o.update({f"{A}.actor.fsdp_config.{k}": v for k, v in sharding.items()})
    if uses_ref:
        o[f"{A}.ref.log_prob_micro_batch_size_per_gpu"] = eff.score_micro
        if eff.ref == "separate":
            o[f"{A}.ref.fsdp_config.param_offload"] = True
    o.update(_rollout(request, eff.score_micro, n))
    if request.algo == "ppo":
        critic = model if request.critic_model is None else model_path(request.critic_model, "critic_model", FRAMEWORK)
        o["critic.strategy"] = strategy
        o["critic.model.path"] = critic
        o["critic.model.enable_gradient_checkpointing"] = request.gradient_checkpointing
        if hasattr(request, "packing"):
            o["critic.model.use_remove_padding"] = request.packing
        if getattr(request, "sequence_parallel", 1) > 1:
            o["critic.ulysses_sequence_parallel_size"] = request.sequence_parallel
        if getattr(request, "max_tokens_per_gpu", None):
            o["critic.ppo_max_token_len_per_gpu"] = request.max_tokens_per_gpu
            o["critic.forward_max_token_len_per_gpu"] = (getattr(request, "score_max_tokens_per_gpu", None)
                                                         or request.max_tokens_per_gpu)
        if lora:
            o["critic.model.lora_rank"] = lora
        o["critic.ppo_micro_batch_size_per_gpu"] = micro
        o["critic.forward_micro_batch_size_per_gpu"] = eff.score_micro
        o.update({f"critic.model.fsdp_config.{k}": v for k, v in sharding.items()})
    if eff.reward == "model":
        o["reward_model.enable"] = True
        o["reward_model.model.path"] = (model if request.reward_model is None
                                        else model_path(request.reward_model, "reward_model", FRAMEWORK))
        o["reward_model.micro_batch_size_per_gpu"] = eff.score_micro
    o["algorithm.use_kl_in_reward"] = False
    o["trainer.logger"] = '["console"]'
    o["trainer.nnodes"], o["trainer.n_gpus_per_node"] = nodes, per_node
    return o


def _fsdp(request: EstimateRequest, per_node: int, world: int, master: bool) -> dict[str, Any]:
    """fsdp_config of the trained roles (actor, critic)."""
    out: dict[str, Any] = {"reshard_after_forward": zero_stage(request) >= 3}
    if request.hybrid_shard and per_node < world:
        out["fsdp_size"] = per_node
    out["offload_policy"] = request.offload != "none"
    out["param_offload"] = "params" in request.idle_offload
    out["optimizer_offload"] = "optimizer" in request.idle_offload
    out["dtype"] = DTYPES[request.dtype]
    out["model_dtype"] = "fp32" if master else "bf16"
    return out


def _tokens(request: EstimateRequest, score_micro: int) -> dict[str, Any]:
    """Token caps (use_dynamic_bsz) and Ulysses sequence parallelism of the actor, its reference and its
    log-prob forward, where the request has them."""
    out: dict[str, Any] = {}
    sp = getattr(request, "sequence_parallel", 1)
    if sp > 1:
        out[f"{A}.actor.ulysses_sequence_parallel_size"] = sp
    cap = getattr(request, "max_tokens_per_gpu", None)
    score_cap = getattr(request, "score_max_tokens_per_gpu", None) or cap
    if cap:
        out[f"{A}.actor.use_dynamic_bsz"] = True
        out[f"{A}.actor.ppo_max_token_len_per_gpu"] = cap
    if score_cap:
        for worker in ("rollout", "ref"):
            out[f"{A}.{worker}.log_prob_use_dynamic_bsz"] = True
            out[f"{A}.{worker}.log_prob_max_token_len_per_gpu"] = score_cap
    return out


def _rollout(request: EstimateRequest, score_micro: int, n: int) -> dict[str, Any]:
    """The rollout's overrides: vLLM colocated (what every engine but HF is written as), or HF."""
    r = f"{A}.rollout"
    out: dict[str, Any] = {}
    if request.rollout_engine == "hf":
        out[f"{r}.name"] = "hf"
    else:
        out[f"{r}.name"] = "vllm"
        out[f"{r}.gpu_memory_utilization"] = request.vllm_gpu_memory_utilization
        out[f"{r}.tensor_model_parallel_size"] = request.vllm_tensor_parallel_size
        out[f"{r}.max_num_batched_tokens"] = request.vllm_max_num_batched_tokens or 8192
        out[f"{r}.checkpoint_engine.update_weights_bucket_megabytes"] = request.weight_sync_bucket_mb or 2048
        out[f"{r}.free_cache_engine"] = request.vllm_sleep_mode
    out[f"{r}.n"] = n
    out[f"{r}.log_prob_micro_batch_size_per_gpu"] = score_micro
    return out


def _word(key: str, value: Any) -> str:
    text = str(value)
    return f"{key}={text}" if text.startswith("$HOME/") else shlex.quote(f"{key}={text}")


def script(request: EstimateRequest) -> str:
    """The launch script's text."""
    _nodes, _per_node, gpu = cluster_of(request)
    lines = [f"    {_word(key, value)} \\" for key, value in overrides(request).items()]
    return "\n".join([
        "#!/usr/bin/env bash",
        "# verl launch script written by memplan (memplan plan --emit verl)",
        f"# reads back as the request memplan estimated: memplan estimate --verl run_verl.sh --gpus {gpu}",
        f"# fill in: {DATA_NOTE}",
        "set -x",
        "",
        "python3 -m verl.trainer.main_ppo \\",
        *lines,
        '    "$@"',
        "",
    ])


def emit(request: EstimateRequest) -> Emitted:
    """The verl script for ``request``, read back with ``memplan.frameworks.verl`` to the same run, else an
    ``InputError`` naming the field verl cannot carry."""
    from memplan.frameworks import verl as reader

    text = script(request)
    _nodes, _per_node, gpu = cluster_of(request)
    check_round_trip(FRAMEWORK, request, reader.fields(reader.read(text), gpu).fields, HINTS)
    return Emitted(target=FRAMEWORK, files=(LaunchFile(name="run_verl.sh", text=text),),
                   read_back=f"memplan estimate --verl run_verl.sh --gpus {gpu}", notes=(DATA_NOTE,))
