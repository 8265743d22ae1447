"""A TRL run (GRPO, RLOO, DPO or SFT), read from its recipe and its accelerate config.

``read(text)`` takes the recipe: the YAML file given to ``--config`` (TRL's scripts read GRPOConfig,
ModelConfig and ScriptArguments fields from one flat mapping) or a launch command's ``--key value`` arguments
(``accelerate launch --num_processes 8 trl/scripts/grpo.py --model_name_or_path ... --num_generations 8``).
``read_accelerate(text)`` takes accelerate's config YAML (``--config_file``: TRL ships ``zero1/2/3.yaml``,
``fsdp1/2.yaml``, ``multi_gpu.yaml``). ``fields(recipe, accelerate, gpu)`` maps them onto request fields, with
TRL 1.16's defaults (``GRPOConfig``, ``RLOOConfig``, ``ModelConfig``, read from the trl wheel) for what they leave
out, and one note per setting memplan reads differently or not at all. Explicit CLI flags override it.

What is read:

    model_name_or_path                model (an unknown '-Instruct'/'-Chat' name: its base, noted)
    num_generations                   group_size (GRPO 8, RLOO 2)
    per_device_train_batch_size       micro_batch_size (completions per forward/backward), and the scoring
                                      micro batch (TRL's _get_per_token_logps_and_entropies chunks by it)
    × steps_per_generation            completions each GPU generates at once (steps_per_generation defaults
      (or generation_batch_size)      to gradient_accumulation_steps): rollout_batch_size × group_size
    max_completion_length             gen_len (512); max_prompt_length (older TRL) prompt_len, else the request's
    beta                              0 (GRPO's default): no reference; with PEFT the adapter disabled; else a
                                      separate reference, DeepSpeed ZeRO-3-sharded only under ZeRO-3 (TRL's
                                      prepare_deepspeed runs it at stage 0 otherwise)
    reward_model_name_or_path         a reward model (TRL's grpo.py), else rule-based rewards
    gradient_checkpointing, bf16, fp16
                                      both on by default in GRPOConfig / RLOOConfig
    dtype                             the model's load dtype (ModelConfig: float32): bf16 under FSDP drops the
                                      fp32 master weights
    use_peft, lora_r, lora_target_modules, load_in_4bit / load_in_8bit
                                      lora_rank (16), lora_targets, quantize_base
    use_vllm, vllm_mode, vllm_gpu_memory_utilization, vllm_enable_sleep_mode, vllm_tensor_parallel_size
                                      rollout_engine 'vllm' (colocate: 0.3, no sleep mode, 1-way) or 'remote'
                                      (server); a PEFT actor under ZeRO-3 syncs to vLLM gathered whole
                                      (_iter_named_params): gather_for_generation
    ds3_gather_for_generation         gather_for_generation (HF generation under ZeRO-3; on by default)
    attn_implementation               attention 'eager' when asked
    (always)                          logprob_kernel 'chunked': TRL 1.16 patches every trained and reference
                                      model with its fused LM head (add_fused_lm_head), so no logits exist
  DPO and SFT (``algo`` 'dpo' / 'sft'):
    per_device_train_batch_size       micro_batch_size (DPO: pairs, chosen + rejected in one forward)
    max_length                        seq_len (1024)
    DPO's reference                   the adapter disabled with PEFT; none with precompute_ref_log_probs (FSDP
                                      excepted, as DPOTrainer); else separate, sharded as for GRPO
  accelerate config:
    distributed_type                  DEEPSPEED → engine 'deepspeed' (zero_stage, offload_optimizer_device,
                                      offload_param_device); FSDP → engine 'fsdp' (fsdp_version 2's
                                      fsdp_reshard_after_forward true/false; FSDP1's fsdp_sharding_strategy,
                                      which accelerate runs before fsdp_reshard_after_forward: ``_fsdp1_strategy``;
                                      fsdp_offload_params); MULTI_GPU / NO (quoted or not) → engine 'torch'
    num_processes, num_machines       gpus, with the GPU kind named by the caller
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from memplan.errors import InputError
from memplan.frameworks.common import (
    Settings,
    boolean,
    catalog_model,
    command_arguments,
    integer,
    is_file,
    read_text,
)

FIELD = "trl"
ACCELERATE_FIELD = "accelerate_config"
TRAINERS = ("grpo", "rloo", "dpo", "sft")
DEFAULTS: dict[str, dict[str, Any]] = {  # trl 1.16.0: GRPOConfig, RLOOConfig, DPOConfig, SFTConfig
    "grpo": {"num_generations": 8, "beta": 0.0},
    "rloo": {"num_generations": 2, "beta": 0.05},
    "dpo": {"max_length": 1024, "beta": 0.1, "precompute_ref_log_probs": False, "padding_free": False},
    "sft": {"max_length": 1024, "packing": False, "padding_free": False},
}
COMMON: dict[str, Any] = {
    "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_completion_length": 512,
    "gradient_checkpointing": True, "bf16": None, "fp16": False, "use_vllm": False, "vllm_mode": "colocate",
    "vllm_gpu_memory_utilization": 0.3, "vllm_enable_sleep_mode": False, "vllm_tensor_parallel_size": 1,
    "ds3_gather_for_generation": True,
    "dtype": "float32", "use_peft": False, "lora_r": 16, "lora_target_modules": None, "load_in_4bit": False,
    "load_in_8bit": False, "attn_implementation": None, "use_liger_kernel": False, "top_entropy_quantile": 1.0,
    "entropy_coef": 0.0, "use_adaptive_entropy": False, "cast_lm_head_to_fp32": False,
}
_SHARDING_STRATEGY = {"FULL_SHARD": 3, "1": 3, "SHARD_GRAD_OP": 2, "2": 2, "NO_SHARD": 0, "3": 0,
                      "HYBRID_SHARD": 3, "4": 3, "HYBRID_SHARD_ZERO2": 2, "_HYBRID_SHARD_ZERO2": 2, "5": 2}
"""accelerate's FSDP_SHARDING_STRATEGY names (utils/constants.py), torch's ShardingStrategy names and numbers → the
ZeRO stage they shard like."""


class TrlRun(NamedTuple):
    fields: dict[str, Any]
    """Request fields, ``gpus`` included when it could be named."""
    notes: list[str]
    """Settings read differently or not at all, one line each."""


def _yaml(text: str, field: str) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml comes with the cli and api extras
        raise InputError(field, "reading YAML needs pyyaml: pip install 'memplan[cli]'", None) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(field, f"not valid YAML: {str(exc).splitlines()[0]}", text.strip()[:80]) from None


def read(text: str) -> dict[str, Any]:
    """A TRL recipe: its YAML mapping, or a launch command's arguments."""
    data = _yaml(text, FIELD) if ":" in text else None
    if isinstance(data, dict):
        if not all(isinstance(k, str) for k in data):
            raise InputError(FIELD, "recipe keys must be strings", text.strip()[:80])
        return data
    args = command_arguments(text, FIELD)
    if not args:
        raise InputError(FIELD, "no TRL settings found: give the recipe YAML (--config) or the launch command "
                         "with its --key value arguments", text.strip()[:80])
    return args


def read_accelerate(text: str) -> dict[str, Any]:
    """accelerate's config YAML (``accelerate config`` writes it; TRL ships examples)."""
    data = _yaml(text, ACCELERATE_FIELD)
    if not isinstance(data, dict):
        raise InputError(ACCELERATE_FIELD, "not an accelerate config (a YAML mapping with distributed_type)",
                         text.strip()[:80])
    return data


def _parallel(acc: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Engine, sharding and offload of accelerate's config."""
    kind = acc.get("distributed_type", "NO")
    # an unquoted `distributed_type: NO` is YAML 1.1's false (accelerate writes 'NO' quoted: config_args.py
    # to_yaml_file, yaml.safe_dump; its from_yaml_file reads the false back and runs undistributed)
    kind = "NO" if kind is False else str(kind).upper()
    out: dict[str, Any] = {}
    if kind == "DEEPSPEED":
        ds = acc.get("deepspeed_config") or {}
        if not isinstance(ds, dict):
            raise InputError(ACCELERATE_FIELD, "deepspeed_config must be a mapping", ds)
        if ds.get("deepspeed_config_file"):
            notes.append(f"deepspeed_config_file {ds['deepspeed_config_file']}: not read here; pass it with "
                         "--deepspeed-config")
        out["engine"] = "deepspeed"
        out["zero_stage"] = integer(ds.get("zero_stage", 2), "deepspeed_config.zero_stage", ACCELERATE_FIELD, 0)
        optimizer = str(ds.get("offload_optimizer_device", "none")).lower() not in ("none", "")
        params = str(ds.get("offload_param_device", "none")).lower() not in ("none", "")
        if params:
            out["offload"] = "optimizer+params"
            if not optimizer:
                notes.append("offload_param_device without offload_optimizer_device: estimated with both offloaded")
        elif optimizer:
            out["offload"] = "optimizer"
    elif kind == "FSDP":
        fsdp = acc.get("fsdp_config") or {}
        if not isinstance(fsdp, dict):
            raise InputError(ACCELERATE_FIELD, "fsdp_config must be a mapping", fsdp)
        out["engine"] = "fsdp"
        if str(fsdp.get("fsdp_version", 1)) == "2":
            reshard = fsdp.get("fsdp_reshard_after_forward", True)  # FSDP2 ignores fsdp_sharding_strategy
            if str(reshard).upper() in _SHARDING_STRATEGY:  # accelerate: "not supported with FSDP2"
                raise InputError(ACCELERATE_FIELD, f"fsdp_reshard_after_forward {reshard!r} is an FSDP1 sharding "
                                 "strategy: with fsdp_version 2 it is true (full shard) or false (SHARD_GRAD_OP)",
                                 reshard)
            out["zero_stage"] = 3 if boolean(reshard, "fsdp_reshard_after_forward", ACCELERATE_FIELD) else 2
        else:
            strategy = _fsdp1_strategy(fsdp, notes)
            out["zero_stage"] = _SHARDING_STRATEGY[strategy]
            out["hybrid_shard"] = "HYBRID" in strategy or strategy in ("4", "5")
            out["fsdp_version"] = 1  # FullyShardedDataParallel, one flat parameter per wrapped decoder layer
        if boolean(fsdp.get("fsdp_offload_params", False), "fsdp_offload_params", ACCELERATE_FIELD):
            out["offload"] = "optimizer+params"
        if boolean(fsdp.get("fsdp_activation_checkpointing", False), "fsdp_activation_checkpointing",
                 ACCELERATE_FIELD):
            out["gradient_checkpointing"] = True
    elif kind in ("MULTI_GPU", "NO"):
        out["engine"] = "torch"
    else:
        raise InputError(ACCELERATE_FIELD, f"distributed_type {kind!r} is not modeled: use DEEPSPEED, FSDP, "
                         "MULTI_GPU or NO", kind)
    return out


def _strategy_name(value: Any, key: str) -> str:
    """An FSDP1 sharding strategy as accelerate reads it: a name of ``FSDP_SHARDING_STRATEGY`` or
    ``ShardingStrategy``, or its number 1–5; anything else names the key."""
    name = str(value).upper()
    if isinstance(value, bool) or name not in _SHARDING_STRATEGY:
        raise InputError(ACCELERATE_FIELD, f"{key} {value!r} with fsdp_version 1 is not one of "
                         f"{', '.join(k for k in _SHARDING_STRATEGY if not k.isdigit())}", value)
    return name


def _fsdp1_strategy(fsdp: dict[str, Any], notes: list[str]) -> str:
    """The sharding strategy an FSDP1 run gets from accelerate 1.16: ``fsdp_sharding_strategy`` (FULL_SHARD when
    unset), whatever ``fsdp_reshard_after_forward`` says. accelerate's launcher always exports
    FSDP_SHARDING_STRATEGY (its ``--fsdp_sharding_strategy`` defaults to FULL_SHARD: utils/launch.py
    ``prepare_multi_gpu_env``); ``FullyShardedDataParallelPlugin.__post_init__`` takes it under fsdp_version 1
    and reads ``reshard_after_forward`` only when no strategy is set; ``Accelerator.prepare_model`` passes
    ``sharding_strategy or reshard_after_forward``. ``accelerate config`` writes only the newer key for FSDP1
    (commands/config/cluster.py), and TRL's examples/accelerate_configs/fsdp1.yaml uses it (FULL_SHARD)."""
    strategy = _strategy_name(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD"), "fsdp_sharding_strategy")
    if fsdp.get("fsdp_reshard_after_forward") is not None:
        reshard = fsdp["fsdp_reshard_after_forward"]
        wanted = None if isinstance(reshard, bool) else _strategy_name(reshard, "fsdp_reshard_after_forward")
        if wanted is None or _SHARDING_STRATEGY[wanted] != _SHARDING_STRATEGY[strategy] or (
                "HYBRID" in wanted) != ("HYBRID" in strategy):
            given = "" if "fsdp_sharding_strategy" in fsdp else ", its default"
            notes.append(f"fsdp_reshard_after_forward {reshard!r} with fsdp_version 1: accelerate 1.16 runs "
                         f"fsdp_sharding_strategy ({strategy}{given}), which its FSDP plugin takes first; estimated "
                         f"as {strategy} (set fsdp_sharding_strategy to run another)")
    return strategy


def _processes(acc: dict[str, Any] | None) -> int:
    """accelerate's num_processes: the GPUs of the run (1 without it)."""
    if acc is None or "num_processes" not in acc:
        return 1
    return integer(acc["num_processes"], "num_processes", ACCELERATE_FIELD)


def _cluster(acc: dict[str, Any] | None, gpu: str | None) -> str | None:
    """``gpus`` for the request: a full spec as given ('8xH100-80GB'), or a kind with accelerate's counts."""
    if gpu is not None and gpu.strip()[:1].isdigit():
        return gpu
    if acc is None or "num_processes" not in acc:
        if gpu is None:
            return None
        raise InputError("gpus", "give the GPU count too (8xH100-80GB), or the accelerate config with "
                         "num_processes", gpu)
    processes = _processes(acc)
    machines = integer(acc.get("num_machines", 1), "num_machines", ACCELERATE_FIELD)
    if processes % machines:
        raise InputError(ACCELERATE_FIELD, f"num_processes {processes} is not a multiple of num_machines "
                         f"{machines}", processes)
    if gpu is None:
        return None
    per_node = processes // machines
    return f"{machines}x{per_node}x{gpu}" if machines > 1 else f"{per_node}x{gpu}"


def fields(recipe: dict[str, Any], accelerate: dict[str, Any] | None = None, gpu: str | None = None,
           algo: str | None = None, given: frozenset[str] = frozenset()) -> TrlRun:
    """Request fields of a TRL run: ``recipe`` (from ``read``) on TRL's defaults, ``accelerate`` (from
    ``read_accelerate``) for the engine and the GPU count; ``gpu`` names the GPU kind ('H100-80GB') or the whole
    cluster ('8xH100-80GB'); ``algo`` the trainer (grpo, the default; rloo, dpo, sft); ``given``: request fields
    the caller sets itself (no note asks for them)."""
    algo = algo or "grpo"
    if algo not in TRAINERS:
        raise InputError("algo", "the TRL reader reads GRPOTrainer, RLOOTrainer, DPOTrainer and SFTTrainer recipes: "
                         f"use {', '.join(TRAINERS)}", algo)
    defaults = {**COMMON, **DEFAULTS[algo]}

    settings = Settings(recipe, defaults, FIELD)
    get, num, flag = settings.get, settings.num, settings.flag

    notes: list[str] = []
    out: dict[str, Any] = {"algo": algo}
    engine = {"engine": "torch"}
    if accelerate is not None:
        engine = _parallel(accelerate, notes)
    else:
        notes.append("no accelerate config: one process per GPU without sharding (engine 'torch'); pass "
                     "--accelerate-config for DeepSpeed or FSDP")
    out.update(engine)
    cluster = _cluster(accelerate, gpu)
    if cluster is not None:
        out["gpus"] = cluster
    if "model" not in given:
        out["model"] = catalog_model(get("model_name_or_path"), "model_name_or_path", FIELD, notes)
    out["micro_batch_size"] = num("per_device_train_batch_size")

    peft = flag("use_peft")
    if peft:
        out["lora_rank"] = num("lora_r")
        targets = get("lora_target_modules")
        if targets == "all-linear":
            out["lora_targets"] = "all-linear"
        else:
            out["lora_targets"] = "attention"
            notes.append(f"lora_target_modules {targets!r}" + (" (peft's default for the model: q_proj and v_proj "
                         "in Llama and Qwen)" if targets is None else "") + ": estimated as the attention "
                         "projections (lora_targets 'attention')")
        if flag("load_in_4bit"):
            out["quantize_base"] = "int4"
        elif flag("load_in_8bit"):
            out["quantize_base"] = "int8"
    fp16 = flag("fp16")
    bf16 = not fp16 if get("bf16") is None else flag("bf16")  # bf16 unless fp16
    out["dtype"] = "bf16" if bf16 else "fp16" if fp16 else "fp32"
    load_dtype = str(get("dtype")).replace("torch.", "")
    if out["dtype"] != "fp32":
        if engine["engine"] == "fsdp" and load_dtype in ("bfloat16", "float16"):
            out["master_weights"] = False  # FSDP keeps the loaded 16-bit weights as its shards
        elif engine["engine"] == "torch" and load_dtype in ("float32", "auto"):
            out["master_weights"] = True
            notes.append("model loaded in float32 under autocast (engine 'torch'): counted as 16-bit weights + fp32 "
                         "master, the same 16 bytes per trained parameter")
    if "gradient_checkpointing" not in out:
        out["gradient_checkpointing"] = flag("gradient_checkpointing")
    if get("attn_implementation") == "eager":
        out["attention"] = "eager"
    out["logprob_kernel"] = "chunked"  # every trainer patches the model with add_fused_lm_head: no logits
    if flag("use_liger_kernel"):
        notes.append("use_liger_kernel: Liger's layer kernels (TRL keeps its own fused LM head) are not modeled")
    if algo in ("grpo", "rloo"):
        _online(recipe, settings, out, engine, peft, accelerate, given, notes)
    else:
        _offline(recipe, settings, out, engine, peft, notes)
    return TrlRun(out, notes)


def _online(recipe: dict[str, Any], settings: Settings, out: dict[str, Any], engine: dict[str, Any],
            peft: bool, accelerate: dict[str, Any] | None, given: frozenset[str], notes: list[str]) -> None:
    """GRPO's and RLOO's generation batch, lengths, reference, reward model and rollout engine."""
    get, num, flag = settings.get, settings.num, settings.flag
    processes = _processes(accelerate)
    group = num("num_generations", 2)
    per_device = out["micro_batch_size"]
    accumulation = num("gradient_accumulation_steps")
    if recipe.get("generation_batch_size") is not None:
        total = integer(recipe["generation_batch_size"], "generation_batch_size", FIELD)
        if total % (per_device * processes):
            raise InputError(FIELD, f"generation_batch_size {total} must be a multiple of per_device_train_batch_size "
                             f"× processes ({per_device * processes})", total)
        steps = total // (per_device * processes)
    else:
        steps = integer(recipe.get("steps_per_generation") or accumulation, "steps_per_generation", FIELD)
    completions = per_device * steps  # each GPU generates its slice of the generation batch at once
    shared = math.gcd(completions, group)  # TRL spreads a prompt's completions over GPUs: keep the product
    out["rollout_batch_size"], out["group_size"] = completions // shared, shared
    if shared != group:
        notes.append(f"{completions} completions per GPU per generation (per_device_train_batch_size × "
                     f"steps_per_generation), {group} per prompt spread over GPUs: estimated as "
                     f"{completions // shared} prompts × {shared}")
    out["gen_len"] = num("max_completion_length")
    if recipe.get("max_prompt_length") is not None:
        out["prompt_len"] = integer(recipe["max_prompt_length"], "max_prompt_length", FIELD)
    elif "prompt_len" not in given:
        notes.append("TRL 1.16 does not truncate prompts (no max_prompt_length): pass --prompt-len, your longest "
                     "prompt in tokens (memplan's default is 256)")

    beta = settings.number("beta", 0.0, 1e6)
    if beta == 0:
        out["ref"] = "none"
    elif peft:
        out["ref"] = "lora-shared"
    else:
        out["ref"] = "separate"
        _frozen_sharding(out, "ref", engine)
    if recipe.get("reward_model_name_or_path"):
        out["reward"] = "model"
        out["reward_model"] = catalog_model(recipe["reward_model_name_or_path"], "reward_model_name_or_path", FIELD,
                                            notes)
        _frozen_sharding(out, "reward", engine)
    else:
        out["reward"] = "rule"

    if flag("use_vllm"):
        mode = get("vllm_mode")
        if mode == "server":
            out["rollout_engine"] = "remote"
        elif mode == "colocate":
            out["rollout_engine"] = "vllm"
            out["vllm_gpu_memory_utilization"] = settings.number("vllm_gpu_memory_utilization", 0.01, 1.0)
            out["vllm_sleep_mode"] = flag("vllm_enable_sleep_mode")
            out["vllm_tensor_parallel_size"] = num("vllm_tensor_parallel_size")
            if peft and engine["engine"] == "deepspeed" and engine.get("zero_stage") == 3:
                out["gather_for_generation"] = True  # _iter_named_params gathers a PEFT model whole to merge it
        else:
            raise InputError(FIELD, f"vllm_mode {mode!r}: set colocate or server", mode)
    else:
        out["rollout_engine"] = "hf"
        if engine["engine"] == "deepspeed" and engine.get("zero_stage") == 3:
            out["gather_for_generation"] = flag("ds3_gather_for_generation")
    # grpo_trainer.py::_get_per_token_logps_and_entropies: the loss forward takes utils.entropy_from_logits (128-row
    # chunks) with grad when the entropy bonus is on (entropy_coef ≠ 0), else under no_grad for the
    # top_entropy_quantile mask
    if get("entropy_coef") or flag("use_adaptive_entropy"):
        out["entropy"], out["entropy_kernel"] = "update", "chunked"
    elif get("top_entropy_quantile") != 1.0:
        out["entropy"], out["entropy_kernel"] = "update-no-grad", "chunked"
    if "entropy" in out and out.get("logprob_kernel") in ("chunked", "row-chunked"):
        out["logprob_kernel"] = "log-softmax"  # the entropy reads the logits: outputs.logits, selective_log_softmax
        notes.append("entropies (entropy_coef, top_entropy_quantile) are taken from the logits (grpo_trainer.py "
                     "_get_per_token_logps_and_entropies): every forward estimated with its logits and log-softmax")
    if flag("cast_lm_head_to_fp32"):
        notes.append("cast_lm_head_to_fp32: the fp32 LM head and its fp32 logits are not counted")
    iterations = integer(recipe.get("num_iterations", 1), "num_iterations", FIELD)
    if out["rollout_engine"] == "hf" and accumulation % (steps * iterations) == 0:
        notes.append("the old log-probs' actor forward is counted; TRL skips it here (generation aligned with the "
                     "optimizer steps, no vLLM)")


def _offline(recipe: dict[str, Any], settings: Settings, out: dict[str, Any], engine: dict[str, Any],
             peft: bool, notes: list[str]) -> None:
    """DPO's and SFT's sequence length, and DPO's reference (the pairs: memplan's DPO counts chosen + rejected)."""
    num, flag = settings.num, settings.flag
    out["seq_len"] = num("max_length")
    if flag("padding_free") or boolean(recipe.get("packing", False), "packing", FIELD):
        # DataCollatorForLanguageModeling(padding_free=True) flattens a micro batch into one row with position_ids;
        # packing (bfd) fills rows of max_length: either way a micro batch of at most micro × max_length tokens
        if out.get("attention") == "eager":
            notes.append("padding_free / packing with eager attention (TRL needs flash-attn's varlen kernel): "
                         "estimated padded")
        else:
            out["packing"] = True
    if out["algo"] == "sft":
        return
    precompute = flag("precompute_ref_log_probs")
    if peft:
        out["ref"] = "lora-shared"
    elif precompute and engine["engine"] != "fsdp":  # DPOTrainer keeps no reference then (FSDP excepted)
        out["ref"] = "none"
        notes.append("precompute_ref_log_probs: the reference's log-probs are taken before training; its pass over "
                     "the data is not estimated")
    else:
        out["ref"] = "separate"
        _frozen_sharding(out, "ref", engine)


def _frozen_sharding(out: dict[str, Any], role: str, engine: dict[str, Any]) -> None:
    """A frozen model as TRL prepares it: under DeepSpeed, ZeRO-3 with the run's parameter offload, or stage 0
    (``prepare_deepspeed`` keeps stage 3 only); under FSDP, sharded as the actor."""
    if engine["engine"] != "deepspeed":
        return
    stage = engine.get("zero_stage", 0)
    out[f"{role}_zero_stage"] = 3 if stage == 3 else 0
    if stage == 3 and engine.get("offload") == "optimizer+params":
        out["offload_ref" if role == "ref" else "offload_reward"] = True


def _text(source: str | Path, field: str, suffixes: tuple[str, ...]) -> str:
    """A file's text when ``source`` is a file's path or looks like one (a single line ending in one of
    ``suffixes``: an unreadable one is an error naming ``field``), else ``source`` itself."""
    text = str(source)
    if is_file(text) or ("\n" not in text and text.endswith(suffixes)):
        return read_text(text, field)
    return text


def load(recipe: str | Path, accelerate: str | Path | None = None, gpu: str | None = None,
         algo: str | None = None, given: frozenset[str] = frozenset()) -> TrlRun:
    """``fields`` of a recipe (a path, or its text) and an accelerate config (a path, or its text)."""
    text = _text(recipe, FIELD, (".yaml", ".yml", ".sh"))
    acc = None if accelerate is None else read_accelerate(_text(accelerate, ACCELERATE_FIELD, (".yaml", ".yml")))
    return fields(read(text), acc, gpu, algo, given)
