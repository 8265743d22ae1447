"""An OpenRLHF PPO-family run, read from its launch command (``python3 -m openrlhf.cli.train_ppo_ray ...``).

``read(text)`` collects the command's ``--key value`` arguments: OpenRLHF 0.11's dotted names
(``--actor.model_name_or_path``, ``--train.micro_batch_size``) or the flat names of earlier releases
(``--pretrain``, ``--micro_train_batch_size``; ``LEGACY`` maps them). ``fields(args, gpu)`` maps them onto
request fields with OpenRLHF 0.11.2's defaults (``cli/train_ppo_ray.py``, read from the wheel) and one note per
setting memplan reads differently or not at all. Explicit CLI flags override it.

What is read:

    actor.model_name_or_path          model (an unknown '-Instruct'/'-Chat' name: its base, noted)
    algo.advantage.estimator          gae → PPO (critic: critic.model_name_or_path, else the reward model's);
                                      rloo → RLOO; group_norm, reinforce, reinforce_baseline, dr_grpo → GRPO
    algo.kl.init_coef, algo.kl.use_loss
                                      a separate reference (OpenRLHF loads one even with LoRA) when either
    reward.model_name_or_path         reward 'model', else rule-based (remote_url, agent functions)
    train.colocate_all                every model and the vLLM engines on the same GPUs (placement 'colocated',
                                      rollout_engine 'vllm'), each model and vLLM worker a process of its own
                                      (processes_per_gpu); without it each model has its own GPUs
                                      (placement 'split') and the vLLM engines theirs (rollout_engine 'remote')
    actor.num_nodes × num_gpus_per_node
                                      the GPUs of each model (split: one group per model, of the actor's size)
    train.colocate_actor_ref, train.colocate_critic_reward
                                      split_groups: the pair shares one group, a Ray actor (process) each
    ds.zero_stage                     zero_stage; frozen models at stage 3 only under ZeRO-3 (get_ds_eval_config)
    ds.adam_offload, ref.offload, reward.offload
                                      offload 'optimizer'; the frozen models' parameters on the CPU (ZeRO-3)
    ds.enable_sleep (colocate_all)    idle_offload 'optimizer': offload_deepspeed_states moves the trained
                                      models' optimizer states, masters and gradients to the CPU between their fits
    ds.ring_attn_size, ds.ring_attn_head_stride
                                      sequence_parallel with sequence_parallel_mode 'ring', ring_head_stride
                                      (each GPU of the ring holds 1/size of every packed row; K/V all-gathered)
    ds.param_dtype, ds.attn_implementation, actor.gradient_checkpointing_enable, ds.lora.rank,
    ds.lora.target_modules, ds.load_in_4bit
                                      dtype, attention, gradient_checkpointing, lora_rank, lora_targets, int4 base
    train.micro_batch_size            micro_batch_size
    rollout.micro_batch_size          score_micro_batch_size (make-experience forwards)
    rollout.batch_size ÷ actor GPUs   rollout_batch_size (prompts per GPU); rollout.n_samples_per_prompt → group
    data.max_len, rollout.max_new_tokens
                                      the sequence and its answer
    vllm.gpu_memory_utilization, vllm.enable_sleep, vllm.tensor_parallel_size
                                      the colocated engines' reservation, sleep mode (at level 1: vLLM's
                                      weights wait in host RAM, vllm_sleep_level 1) and TP
    (always)                          logprob_kernel 'fp32-fused': ``Actor.forward`` casts every position's
                                      logits to fp32 and ``log_probs_from_logits`` takes them with flash-attn's
                                      cross-entropy (flash-attn 2.8.3 is a dependency of openrlhf 0.11.2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from memplan.errors import InputError
from memplan.frameworks.common import Settings, catalog_model, command_arguments, integer, launch_text

FIELD = "openrlhf"
ESTIMATORS = {"gae": "ppo", "rloo": "rloo", "group_norm": "grpo", "reinforce": "grpo",
              "reinforce_baseline": "grpo", "dr_grpo": "grpo"}
DEFAULTS: dict[str, Any] = {  # openrlhf 0.11.2 cli/train_ppo_ray.py, what this module reads
    "actor.num_nodes": 1, "actor.num_gpus_per_node": 8, "train.colocate_all": False,
    "train.colocate_actor_ref": False, "train.colocate_critic_reward": False, "vllm.num_engines": None,
    "vllm.gpu_memory_utilization": 0.95, "vllm.enable_sleep": False, "vllm.tensor_parallel_size": 1,
    "ds.enable_sleep": False,
    "ds.zero_stage": 2, "ds.param_dtype": "bf16", "ds.adam_offload": False, "ds.attn_implementation":
    "flash_attention_2", "actor.gradient_checkpointing_enable": False, "ds.lora.rank": 0,
    "ds.lora.target_modules": "all-linear", "ds.load_in_4bit": False, "ds.packing_samples": False,
    "train.dynamic_batch_enable": False, "ds.tensor_parallel_size": 1, "ds.ring_attn_size": 1,
    "ds.ring_attn_head_stride": 1,
    "rollout.batch_size": 1024, "rollout.micro_batch_size": 1, "train.micro_batch_size": 1,
    "rollout.n_samples_per_prompt": 1, "data.max_len": 2048, "rollout.max_new_tokens": None,
    "algo.advantage.estimator": "gae", "algo.kl.init_coef": 0.01, "algo.kl.use_loss": False, "ref.offload": False,
    "reward.offload": False, "train.max_tokens_per_gpu": 16192, "rollout.max_tokens_per_gpu": None,
    "actor.entropy_coef": None,
}
LEGACY = {  # the flat names of OpenRLHF ≤ 0.9's train_ppo_ray
    "pretrain": "actor.model_name_or_path", "reward_pretrain": "reward.model_name_or_path",
    "critic_pretrain": "critic.model_name_or_path", "remote_rm_url": "reward.remote_url",
    "actor_num_nodes": "actor.num_nodes", "actor_num_gpus_per_node": "actor.num_gpus_per_node",
    "colocate_all_models": "train.colocate_all", "colocate_actor_ref": "train.colocate_actor_ref",
    "colocate_critic_reward": "train.colocate_critic_reward", "vllm_num_engines": "vllm.num_engines",
    "vllm_gpu_memory_utilization": "vllm.gpu_memory_utilization", "vllm_enable_sleep": "vllm.enable_sleep",
    "vllm_tensor_parallel_size": "vllm.tensor_parallel_size",
    "deepspeed_enable_sleep": "ds.enable_sleep", "zero_stage": "ds.zero_stage", "adam_offload": "ds.adam_offload",
    "gradient_checkpointing": "actor.gradient_checkpointing_enable", "lora_rank": "ds.lora.rank",
    "target_modules": "ds.lora.target_modules", "load_in_4bit": "ds.load_in_4bit",
    "packing_samples": "ds.packing_samples", "use_dynamic_batch": "train.dynamic_batch_enable",
    "micro_train_batch_size": "train.micro_batch_size", "micro_rollout_batch_size": "rollout.micro_batch_size",
    "rollout_batch_size": "rollout.batch_size", "n_samples_per_prompt": "rollout.n_samples_per_prompt",
    "generate_max_len": "rollout.max_new_tokens", "advantage_estimator": "algo.advantage.estimator",
    "init_kl_coef": "algo.kl.init_coef", "use_kl_loss": "algo.kl.use_loss",
    "ring_attn_size": "ds.ring_attn_size", "ring_head_stride": "ds.ring_attn_head_stride",
    "train_max_tokens_per_gpu": "train.max_tokens_per_gpu",
    "rollout_max_tokens_per_gpu": "rollout.max_tokens_per_gpu", "entropy_loss_coef": "actor.entropy_coef",
}


class OpenRLHFRun(NamedTuple):
    fields: dict[str, Any]
    """Request fields, ``gpus`` included when a GPU was named."""
    notes: list[str]
    """Settings read differently or not at all, one line each."""


def read(text: str) -> dict[str, Any]:
    """A launch command's arguments under OpenRLHF 0.11's dotted names (flat legacy names mapped; ``--bf16``,
    ``--flash_attn`` and ``--prompt_max_len`` too)."""
    raw = command_arguments(text, FIELD)
    if not raw:
        raise InputError(FIELD, "no OpenRLHF arguments (--key value) found", text.strip()[:80])
    args: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "ref_reward_offload":  # ≤ 0.9: one flag for both frozen models
            args["ref.offload"] = args["reward.offload"] = value
        elif key == "bf16":
            args["ds.param_dtype"] = "bf16" if value is not False else "fp32"
        elif key == "flash_attn":
            args["ds.attn_implementation"] = "flash_attention_2"
        else:
            args[LEGACY.get(key, key)] = value
    if "prompt_max_len" in raw:  # ≤ 0.9: prompt and answer limits; 0.11: one max_len for both
        prompt = integer(raw["prompt_max_len"], "prompt_max_len", FIELD)
        args.setdefault("data.max_len", prompt + integer(args.get("rollout.max_new_tokens") or 1024,
                                                         "generate_max_len", FIELD))
    return args


def fields(args: dict[str, Any], gpu: str | None = None) -> OpenRLHFRun:
    """Request fields of an OpenRLHF run: ``args`` (from ``read``) on its defaults; ``gpu`` names the GPU kind
    ('H100-80GB'), the count following from the models' placement."""
    settings = Settings(args, DEFAULTS, FIELD)
    get, num, flag = settings.get, settings.num, settings.flag
    notes: list[str] = []
    out: dict[str, Any] = {"engine": "deepspeed"}
    out["model"] = catalog_model(get("actor.model_name_or_path"), "actor.model_name_or_path", FIELD, notes)
    estimator = get("algo.advantage.estimator")
    algo = ESTIMATORS.get(estimator)
    if algo is None:
        raise InputError(FIELD, f"algo.advantage.estimator {estimator!r}: one of {', '.join(ESTIMATORS)}", estimator)
    if estimator not in ("gae", "rloo", "group_norm"):
        notes.append(f"advantage estimator {estimator}: no critic, memory as GRPO's")
    out["algo"] = algo
    reward = get("reward.model_name_or_path")
    if isinstance(reward, str) and "," in reward:  # several reward models: the critic starts from the first
        notes.append(f"reward.model_name_or_path {reward}: estimated with the first reward model only")
        reward = reward.split(",")[0]
    if reward:
        out["reward"], out["reward_model"] = "model", catalog_model(reward, "reward.model_name_or_path", FIELD, notes)
    else:
        out["reward"] = "rule"
    if algo == "ppo":
        critic = get("critic.model_name_or_path") or reward
        if critic:
            out["critic_model"] = catalog_model(critic, "critic.model_name_or_path", FIELD, notes)
    kl = settings.number("algo.kl.init_coef", 0.0, 1e6)
    reference = kl > 0 or flag("algo.kl.use_loss")
    out["ref"] = "separate" if reference else "none"  # ReferenceModelActor loads the base, LoRA or not

    stage = num("ds.zero_stage", 0)
    out["zero_stage"] = stage
    frozen_stage = 3 if stage == 3 else 0  # get_ds_eval_config
    out["ref_zero_stage"] = out["reward_zero_stage"] = frozen_stage
    for role, field in (("ref", "offload_ref"), ("reward", "offload_reward")):  # get_ds_eval_config(offload=...)
        if not flag(f"{role}.offload") or (role == "ref" and not reference) or (role == "reward" and not reward):
            continue
        if frozen_stage == 3:
            out[field] = True
        else:
            notes.append(f"{role}.offload below ZeRO-3: the model moved to the CPU between its forwards is counted "
                         "resident (an upper bound)")
    if flag("ds.adam_offload"):
        out["offload"] = "optimizer"
    dtype = get("ds.param_dtype")
    out["dtype"] = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}.get(dtype)
    if out["dtype"] is None:
        raise InputError(FIELD, f"ds.param_dtype {dtype!r}: bf16, fp16 or fp32", dtype)
    attention = str(get("ds.attn_implementation"))
    out["attention"] = "eager" if attention == "eager" else "flash" if "flash" in attention else "sdpa"
    out["gradient_checkpointing"] = flag("actor.gradient_checkpointing_enable")
    rank = num("ds.lora.rank", 0)
    if rank:
        out["lora_rank"] = rank
        targets = get("ds.lora.target_modules")
        out["lora_targets"] = "all-linear"
        if targets != "all-linear":
            notes.append(f"LoRA target_modules {targets!r}: estimated as all-linear")
        if flag("ds.load_in_4bit"):
            out["quantize_base"] = "int4"

    per_node = num("actor.num_gpus_per_node")
    actor_gpus = num("actor.num_nodes") * per_node
    colocated = flag("train.colocate_all")
    engines = get("vllm.num_engines")
    vllm = engines is not None and num("vllm.num_engines", 0) > 0
    active = 1 + (algo == "ppo") + reference + bool(reward)
    if colocated:
        out["placement"], gpus = "colocated", actor_gpus
        if vllm:
            out["rollout_engine"] = "vllm"
            out["vllm_gpu_memory_utilization"] = settings.number("vllm.gpu_memory_utilization", 0.01, 1.0)
            out["vllm_sleep_mode"] = flag("vllm.enable_sleep")
            if out["vllm_sleep_mode"]:  # trainer/ray/vllm_engine.py: sleep(self, level=1), called without a level
                out["vllm_sleep_level"] = 1
            out["vllm_tensor_parallel_size"] = num("vllm.tensor_parallel_size")
        if flag("ds.enable_sleep") and "offload" not in out:  # offload_deepspeed_states: not with adam_offload
            out["idle_offload"] = "optimizer"  # optimizer states, masters, gradients; the 16-bit weights stay
        # one Ray actor (a process: its own CUDA context) per model on every GPU, and the GPU's vLLM worker
        # (num_engines × tensor_parallel_size = the actor's GPUs)
        out["processes_per_gpu"] = active + vllm
    else:  # each model's Ray actors on their own GPUs; colocate_actor_ref / colocate_critic_reward pair them
        pairs = [pair for pair, on in ((("actor", "reference"), reference and flag("train.colocate_actor_ref")),
                                       (("critic", "reward"), algo == "ppo" and bool(reward)
                                        and flag("train.colocate_critic_reward"))) if on]
        groups = active - len(pairs)
        out["placement"], gpus = ("split", actor_gpus * groups) if groups > 1 else ("colocated", actor_gpus)
        if groups > 1:
            if pairs:
                out["split_groups"] = tuple(pairs)
            notes.append(f"each of the {groups} GPU groups with {actor_gpus} GPUs (the actor's count; OpenRLHF "
                         "sizes each model's group by its own num_gpus_per_node)")
        elif pairs:  # the actor and its reference, alone: every GPU holds both, a process each
            out["processes_per_gpu"] = 2
        if vllm:
            out["rollout_engine"] = "remote"
    if not vllm:
        out["rollout_engine"] = "hf"
    if gpu is not None:
        nodes, rest = divmod(gpus, per_node)
        out["gpus"] = f"{nodes}x{per_node}x{gpu}" if nodes > 1 and not rest else f"{gpus}x{gpu}"

    out["micro_batch_size"] = num("train.micro_batch_size")
    out["score_micro_batch_size"] = num("rollout.micro_batch_size")
    group = num("rollout.n_samples_per_prompt")
    prompts = num("rollout.batch_size")
    out["rollout_batch_size"], out["group_size"] = -(-prompts // actor_gpus), group
    if prompts % actor_gpus:
        notes.append(f"rollout.batch_size {prompts} over {actor_gpus} actor GPUs: {out['rollout_batch_size']} prompts "
                     "per GPU")
    total = num("data.max_len", 2)
    answer = get("rollout.max_new_tokens")
    if answer is None:
        answer = total // 2
        notes.append(f"rollout.max_new_tokens unset: sequences of data.max_len {total} tokens, estimated as half "
                     "prompt, half answer")
    answer = integer(answer, "rollout.max_new_tokens", FIELD)
    if answer >= total:
        raise InputError(FIELD, f"rollout.max_new_tokens {answer} leaves no prompt within data.max_len {total}",
                         answer)
    out["prompt_len"], out["gen_len"] = total - answer, answer
    # cli/train_ppo_ray.py: dynamic batches and ring attention turn packing_samples on
    if flag("ds.packing_samples") or flag("train.dynamic_batch_enable") or num("ds.ring_attn_size") > 1:
        out["packing"] = True
    if flag("train.dynamic_batch_enable"):  # seqlen_balancing.py::get_minimum_num_micro_batch_size: first fit
        out["max_tokens_per_gpu"] = num("train.max_tokens_per_gpu")
        rollout_cap = get("rollout.max_tokens_per_gpu")  # unset: the training cap (cli/train_ppo_ray.py)
        out["score_max_tokens_per_gpu"] = (integer(rollout_cap, "rollout.max_tokens_per_gpu", FIELD)
                                           if rollout_cap is not None else out["max_tokens_per_gpu"])
    if get("actor.entropy_coef") is not None:  # ppo_actor.py: return_entropy when the coefficient is set (0: logs)
        out["entropy"], out["entropy_kernel"] = "update", "eager"  # models/utils.py::compute_entropy, uncompiled
    if num("ds.tensor_parallel_size") > 1:
        notes.append(f"ds.tensor_parallel_size {get('ds.tensor_parallel_size')} (DeepSpeed AutoTP): not modeled; "
                     "estimated without it (an upper bound)")
    if num("ds.ring_attn_size") > 1:  # deepspeed.py::setup_ring_attn → ring_flash_attn's llama3 varlen kernel
        out["sequence_parallel"], out["sequence_parallel_mode"] = num("ds.ring_attn_size"), "ring"
        out["ring_head_stride"] = num("ds.ring_attn_head_stride")
    out["logprob_kernel"] = "fp32-fused"  # Actor.forward: every position's logits in fp32, flash-attn's cross-entropy
    return OpenRLHFRun(out, notes)


def load(source: str | Path, gpu: str | None = None) -> OpenRLHFRun:
    """``fields(read(...))`` of a launch script's path (or its text)."""
    text = launch_text(source, "--", FIELD)
    return fields(read(text), gpu)
