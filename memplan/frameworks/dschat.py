"""A DeepSpeed-Chat step-3 run (PPO; ReMax's fork of the same trainer), read from its launch command
(``deepspeed main.py --actor_model_name_or_path ... --actor_zero_stage 2 ...``).

``read(text)`` collects the command's ``--key value`` arguments; ``fields(args, gpus)`` maps them onto request
fields with the defaults of DeepSpeed-Chat's ``training/step3_rlhf_finetuning/main.py::parse_args``
(DeepSpeedExamples @83757d9, 2025-02-11) and ``dschat/rlhf/rlhf_engine.py`` for what the command leaves out.
The ``deepspeed`` launcher runs one process per GPU of the node: the GPU count is the caller's ``gpus``.

What is read:

    actor_model_name_or_path          model (an unknown '-Instruct'/'-Chat' name: its base, noted)
    critic_model_name_or_path         the critic's and the reward model's architecture (the reward model of
                                      step 2 initialises both), when it is not the actor's
    actor_zero_stage, critic_zero_stage
                                      zero_stage (0), critic_zero_stage (0); the reference at stage 3 only when
                                      the actor is (``_init_ref``), the reward model only when the critic is
                                      (``_init_reward``), else 0
    offload                           offload 'optimizer' ('optimizer+params' at ZeRO-3: get_train_ds_config
                                      offloads both, DeepSpeed moves parameters from stage 3 only)
    offload_reference_model, offload_reward_model
                                      offload_ref, offload_reward at ZeRO-3 (else noted: not applied below it)
    dtype                             fp16 (the default) or bf16
    actor_gradient_checkpointing      gradient_checkpointing (off by default)
    actor_lora_dim                    lora_rank (0); the reference stays a separate full copy
    enable_hybrid_engine              rollout_engine 'hybrid-engine' (off in main.py; every shipped training
                                      script passes it), else 'hf' (HF generate on the ZeRO engine)
    per_device_generation_batch_size, per_device_training_batch_size
                                      rollout_batch_size (16), micro_batch_size (16)
    max_prompt_seq_len, max_answer_seq_len
                                      prompt_len, gen_len (256, 256)
    inference_tp_size, tp_gather_partition_size
                                      inference_tp_size (1), tp_gather_partition_size (8), when tp > 1
    (always)                          engine 'deepspeed', a reward model, a separate reference,
                                      logprob_kernel 'log-softmax' (``gather_log_probs``)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from memplan.errors import InputError
from memplan.frameworks.common import Settings, catalog_model, command_arguments, launch_text

FIELD = "deepspeed_chat"
ALGOS = ("ppo", "remax")
DEFAULTS: dict[str, Any] = {  # step3_rlhf_finetuning/main.py parse_args, what this module reads
    "actor_zero_stage": 0, "critic_zero_stage": 0, "offload": False, "offload_reference_model": False,
    "offload_reward_model": False, "dtype": "fp16", "actor_gradient_checkpointing": False,
    "critic_gradient_checkpointing": False, "actor_lora_dim": 0, "critic_lora_dim": 0,
    "enable_hybrid_engine": False, "per_device_generation_batch_size": 16, "per_device_training_batch_size": 16,
    "max_prompt_seq_len": 256, "max_answer_seq_len": 256, "inference_tp_size": 1, "tp_gather_partition_size": 8,
    "release_inference_cache": False, "unpin_actor_parameters": False,
}


class DsChatRun(NamedTuple):
    fields: dict[str, Any]
    """Request fields (``gpus`` as given)."""
    notes: list[str]
    """Settings read differently or not at all, one line each."""


def read(text: str) -> dict[str, Any]:
    """A step-3 launch command's ``--key value`` arguments (bare flags true)."""
    args = command_arguments(text, FIELD)
    if not args:
        raise InputError(FIELD, "no DeepSpeed-Chat arguments (--key value) found", text.strip()[:80])
    return args


def fields(args: dict[str, Any], gpus: str | None = None, algo: str = "ppo") -> DsChatRun:
    """Request fields of a DeepSpeed-Chat step-3 run: ``args`` (from ``read``) on main.py's defaults; ``algo``
    'ppo' (DeepSpeed-Chat) or 'remax' (ReMax's fork: no critic)."""
    if algo not in ALGOS:
        raise InputError("algo", f"DeepSpeed-Chat's step 3 trains {' or '.join(ALGOS)} (ReMax's fork), got {algo!r}",
                         algo)

    settings = Settings(args, DEFAULTS, FIELD)
    get, num, flag = settings.get, settings.num, settings.flag
    notes: list[str] = []
    out: dict[str, Any] = {"algo": algo, "engine": "deepspeed", "reward": "model", "ref": "separate",
                           "logprob_kernel": "log-softmax"}
    if gpus is not None:
        out["gpus"] = gpus
    actor_path = get("actor_model_name_or_path")
    out["model"] = catalog_model(actor_path, "actor_model_name_or_path", FIELD, notes)
    critic_path = get("critic_model_name_or_path")
    if isinstance(critic_path, str) and critic_path != actor_path:
        critic = catalog_model(critic_path, "critic_model_name_or_path", FIELD, notes)
        out["reward_model"] = critic
        if algo == "ppo":
            out["critic_model"] = critic
    actor, critic = num("actor_zero_stage", 0), num("critic_zero_stage", 0)
    out["zero_stage"] = actor
    if algo == "ppo" and critic != actor:
        out["critic_zero_stage"] = critic
    out["ref_zero_stage"] = 3 if actor == 3 else 0  # rlhf_engine._init_ref
    out["reward_zero_stage"] = 3 if critic == 3 else 0  # rlhf_engine._init_reward
    if flag("offload"):
        out["offload"] = "optimizer+params" if actor == 3 else "optimizer"
    for key, field, stage in (("offload_reference_model", "offload_ref", out["ref_zero_stage"]),
                              ("offload_reward_model", "offload_reward", out["reward_zero_stage"])):
        if flag(key):
            if stage == 3:
                out[field] = True
            else:
                notes.append(f"{key} below ZeRO-3: DeepSpeed moves parameters to the CPU from stage 3 only; "
                             "counted on the GPU")
    dtype = get("dtype")
    if dtype not in ("fp16", "bf16"):
        raise InputError(FIELD, f"dtype {dtype!r}: fp16 or bf16", dtype)
    out["dtype"] = dtype
    out["gradient_checkpointing"] = flag("actor_gradient_checkpointing")
    if algo == "ppo" and flag("critic_gradient_checkpointing") != out["gradient_checkpointing"]:
        notes.append("the critic's gradient checkpointing differs from the actor's: both estimated with the actor's")
    lora = num("actor_lora_dim", 0)
    if lora:
        out["lora_rank"] = lora
    if algo == "ppo" and num("critic_lora_dim", 0) != lora:
        notes.append("critic_lora_dim differs from actor_lora_dim: both estimated with the actor's")
    out["rollout_engine"] = "hybrid-engine" if flag("enable_hybrid_engine") else "hf"
    out["rollout_batch_size"] = num("per_device_generation_batch_size")
    out["micro_batch_size"] = num("per_device_training_batch_size")
    out["prompt_len"], out["gen_len"] = num("max_prompt_seq_len"), num("max_answer_seq_len")
    if num("inference_tp_size") > 1 and out["rollout_engine"] == "hybrid-engine":
        out["inference_tp_size"] = num("inference_tp_size")
        out["tp_gather_partition_size"] = num("tp_gather_partition_size")
    elif num("inference_tp_size") > 1:  # main.py: "hybrid-engine need to be enabled when using this feature"
        notes.append(f"inference_tp_size {get('inference_tp_size')}: ignored, DeepSpeed reads it in the hybrid engine "
                     "only (no --enable_hybrid_engine)")
    for key in ("release_inference_cache", "unpin_actor_parameters"):
        if flag(key):
            notes.append(f"{key}: not modeled; the hybrid engine's workspace counted as kept")
    return DsChatRun(out, notes)


def load(source: str | Path, gpus: str | None = None, algo: str = "ppo") -> DsChatRun:
    """``fields(read(...))`` of a launch command's path (or its text)."""
    return fields(read(launch_text(source, "--", FIELD)), gpus, algo)
