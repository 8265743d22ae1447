"""A TRL run for a request: the recipe YAML its scripts take with ``--config`` (``trl grpo --config recipe.yaml``:
GRPOConfig / RLOOConfig / DPOConfig / SFTConfig, ModelConfig and the script's fields in one flat mapping) and
accelerate's config YAML (``accelerate launch --config_file accelerate.yaml``).

The names are TRL's (``trl/trainer/grpo_config.py``, ``rloo_config.py``, ``dpo_config.py``, ``sft_config.py``,
``model_config.py``; ``trl/scripts/grpo.py``'s ``reward_model_name_or_path`` and ``reward_funcs``;
huggingface/trl f2cd577, 2026-07-24) and accelerate's (the keys of ``trl/accelerate_configs/zero3.yaml``,
``fsdp2.yaml``, ``multi_gpu.yaml``; accelerate 1.16's ``FullyShardedDataParallelPlugin``: FSDP1's
``fsdp_reshard_after_forward`` takes the sharding strategy by name). ``memplan.frameworks.trl`` reads both back.

TRL has no prompt-length setting since 0.28 (``max_prompt_length`` was removed: "filter your dataset"), so the
request's ``prompt_len`` is not in the recipe: the read-back command passes it (``--prompt-len``), and the recipe's
header says it.
"""

from __future__ import annotations

from typing import Any

from memplan.emit.common import (Emitted, LaunchFile, check_round_trip, cluster_of, effective, model_path, whole,
                                 yaml_text, zero_stage)
from memplan.errors import InputError
from memplan.report import EstimateRequest

FRAMEWORK = "TRL"
TRAINERS = ("grpo", "rloo", "dpo", "sft")
CONFIGS = {"grpo": "GRPOConfig", "rloo": "RLOOConfig", "dpo": "DPOConfig", "sft": "SFTConfig"}
FSDP1_STRATEGY = {3: "FULL_SHARD", 2: "SHARD_GRAD_OP", 0: "NO_SHARD"}
HINTS = {
    "logprob_kernel": "TRL patches every model with its fused LM head (add_fused_lm_head): 'chunked'",
    "ref_zero_stage": "TRL's prepare_deepspeed runs a frozen model at ZeRO-3 under ZeRO-3, else stage 0",
    "reward_zero_stage": "TRL's prepare_deepspeed runs a frozen model at ZeRO-3 under ZeRO-3, else stage 0",
    "master_weights": "DeepSpeed keeps fp32 masters; FSDP keeps the loaded dtype (dtype: bfloat16 drops them)",
    "offload": "accelerate's DeepSpeed offloads the optimizer (offload_optimizer_device) and, with it, the "
               "parameters; FSDP's fsdp_offload_params both",
    "rollout_engine": "TRL generates with HF generate, a colocated vLLM (vllm_mode colocate) or a vLLM server",
    "placement": "TRL puts every model on every GPU",
    "processes_per_gpu": "TRL runs one process per GPU",
    "hybrid_shard": "accelerate's DeepSpeed config has no ZeRO++ hpZ key (FSDP: fsdp_version 1, HYBRID_SHARD)",
    "entropy_kernel": "TRL's entropy_from_logits takes 128-row chunks",
}


def _notes(algo: str, prompt_len: int) -> tuple[str, ...]:
    data = "dataset_name (and reward_funcs for rule rewards: a name from trl/scripts/grpo.py or a dotted path)"
    notes = [f"fill in: {data if algo in ('grpo', 'rloo') else 'dataset_name'}"]
    if algo in ("grpo", "rloo"):
        notes.append(f"prompts: memplan planned prompts of at most {prompt_len} tokens; TRL does not truncate them "
                     "(filter your dataset)")
    return tuple(notes)


def recipe(request: EstimateRequest) -> dict[str, Any]:
    """The recipe's settings, in the order of TRL's example recipes."""
    algo = request.algo
    if algo not in TRAINERS:
        raise InputError("algo", f"TRL's trainers memplan reads are {', '.join(TRAINERS)}; {algo!r} is not one",
                         algo)
    eff = effective(request)
    out: dict[str, Any] = {"model_name_or_path": model_path(request.model, "model", FRAMEWORK)}
    if not eff.master_weights and request.dtype != "fp32" and request.engine != "deepspeed":
        out["dtype"] = "bfloat16" if request.dtype == "bf16" else "float16"  # loaded 16-bit: no fp32 master
    if request.attention == "eager":
        out["attn_implementation"] = "eager"
    if request.lora_rank:
        out["use_peft"], out["lora_r"] = True, request.lora_rank
        out["lora_target_modules"] = ("all-linear" if request.lora_targets == "all-linear"
                                      else ["q_proj", "k_proj", "v_proj", "o_proj"])
        if request.quantize_base == "int4":
            out["load_in_4bit"] = True
        elif request.quantize_base == "int8":
            out["load_in_8bit"] = True
    out["bf16"], out["fp16"] = request.dtype == "bf16", request.dtype == "fp16"
    out["gradient_checkpointing"] = request.gradient_checkpointing
    micro = request.micro_batch_size
    out["per_device_train_batch_size"] = micro
    if algo in ("grpo", "rloo"):
        completions = eff.prompts * eff.group
        steps = whole(completions, micro, "micro_batch_size", FRAMEWORK, f"the completions a GPU generates at once "
                      f"(rollout_batch_size {eff.prompts} × num_generations {eff.group} = {completions}) to be "
                      f"per_device_train_batch_size {micro} × steps_per_generation")
        out["gradient_accumulation_steps"] = out["steps_per_generation"] = steps
        out["num_generations"] = eff.group
        out["max_completion_length"] = request.gen_len
        out["beta"] = 0.0 if eff.ref == "none" else 0.04
        if eff.reward == "model":
            out["reward_model_name_or_path"] = (out["model_name_or_path"] if request.reward_model is None
                                                else model_path(request.reward_model, "reward_model", FRAMEWORK))
        else:
            out["reward_funcs"] = ["accuracy_reward"]
        out.update(_generation(request))
        entropy = getattr(request, "entropy", "none")
        if "update" in entropy and entropy != "update-no-grad":
            out["entropy_coef"] = 0.01
        elif entropy == "update-no-grad":
            out["top_entropy_quantile"] = 0.2
    else:
        out["max_length"] = request.seq_len or request.prompt_len + request.gen_len
        if getattr(request, "packing", False):
            out["padding_free"] = True
        if algo == "dpo":
            out["beta"] = 0.1
            if eff.ref == "none":
                out["precompute_ref_log_probs"] = True
    return out


def _generation(request: EstimateRequest) -> dict[str, Any]:
    if request.rollout_engine == "hf":  # ds3_gather_for_generation: read under ZeRO-3 only
        zero3 = request.engine == "deepspeed" and zero_stage(request) == 3
        return {"use_vllm": False, **({"ds3_gather_for_generation": request.gather_for_generation} if zero3 else {})}
    if request.rollout_engine == "remote":
        return {"use_vllm": True, "vllm_mode": "server"}
    return {"use_vllm": True, "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": request.vllm_gpu_memory_utilization,
            "vllm_enable_sleep_mode": request.vllm_sleep_mode,
            "vllm_tensor_parallel_size": request.vllm_tensor_parallel_size}


def accelerate_config(request: EstimateRequest) -> dict[str, Any]:
    """accelerate's config: the keys of TRL's ``accelerate_configs/*.yaml``."""
    nodes, per_node, _gpu = cluster_of(request)
    stage = zero_stage(request)
    out: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "debug": False}
    if request.engine == "deepspeed":
        optimizer = request.offload != "none"
        out["deepspeed_config"] = {
            "deepspeed_multinode_launcher": "standard",
            "offload_optimizer_device": "cpu" if optimizer else "none",
            "offload_param_device": "cpu" if request.offload == "optimizer+params" else "none",
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
            "zero_stage": stage,
        }
        out["distributed_type"] = "DEEPSPEED"
    elif request.engine == "fsdp":
        version = 1 if request.hybrid_shard or getattr(request, "fsdp_version", 2) == 1 else 2
        fsdp: dict[str, Any] = {"fsdp_activation_checkpointing": False,
                                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                "fsdp_cpu_ram_efficient_loading": True,
                                "fsdp_offload_params": request.offload != "none"}
        if version == 2:
            fsdp["fsdp_reshard_after_forward"] = stage >= 3
        else:
            strategy = FSDP1_STRATEGY.get(stage, "FULL_SHARD")
            if request.hybrid_shard:
                strategy = "HYBRID_SHARD" if stage >= 3 else "_HYBRID_SHARD_ZERO2"
            fsdp["fsdp_reshard_after_forward"] = strategy
            fsdp["fsdp_sharding_strategy"] = strategy  # the pre-1.6 key; accelerate takes it first, with a warning
        fsdp["fsdp_state_dict_type"] = "FULL_STATE_DICT"
        fsdp["fsdp_version"] = version
        out["distributed_type"] = "FSDP"
        out["fsdp_config"] = fsdp
    else:
        out["distributed_type"] = "MULTI_GPU" if nodes * per_node > 1 else "NO"
    out["machine_rank"] = 0
    out["main_training_function"] = "main"
    out["mixed_precision"] = {"bf16": "bf16", "fp16": "fp16"}.get(request.dtype, "no")
    out["num_machines"] = nodes
    out["num_processes"] = nodes * per_node
    out["rdzv_backend"] = "static"
    out["same_network"] = True
    out["use_cpu"] = False
    return out


def read_back_command(request: EstimateRequest, gpu: str) -> str:
    return (f"memplan estimate --trl recipe.yaml --accelerate-config accelerate.yaml --gpus {gpu} --algo "
            f"{request.algo}" + (f" --prompt-len {request.prompt_len}" if request.algo in ("grpo", "rloo") else ""))


def emit(request: EstimateRequest) -> Emitted:
    """The recipe and accelerate config for ``request``, read back with ``memplan.frameworks.trl`` (the prompt
    length given, as ``--prompt-len``) to the same run, else an ``InputError`` naming the field TRL cannot carry."""
    from memplan.frameworks import trl as reader

    settings = recipe(request)  # first: it names a trainer TRL does not have
    _nodes, _per_node, gpu = cluster_of(request)
    command = read_back_command(request, gpu)
    recipe_text = (f"# {CONFIGS[request.algo]} recipe written by memplan (--emit trl)\n"
                   f"# launch: accelerate launch --config_file accelerate.yaml -m trl.scripts.{request.algo} "
                   "--config recipe.yaml\n"
                   f"# reads back as the request memplan estimated: {command}\n"
                   + "".join(f"# {note}\n" for note in _notes(request.algo, request.prompt_len))
                   + yaml_text(settings))
    accelerate_text = ("# accelerate config written by memplan (memplan plan --emit trl)\n"
                       + yaml_text(accelerate_config(request)))
    run = reader.fields(reader.read(recipe_text), reader.read_accelerate(accelerate_text), gpu, request.algo,
                        frozenset({"prompt_len"}))
    check_round_trip(FRAMEWORK, request, {**run.fields, "prompt_len": request.prompt_len}, HINTS)
    return Emitted(target="trl", files=(LaunchFile(name="recipe.yaml", text=recipe_text),
                                        LaunchFile(name="accelerate.yaml", text=accelerate_text)),
                   read_back=command, notes=_notes(request.algo, request.prompt_len))
