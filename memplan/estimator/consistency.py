"""Which options a run uses: the model set each algorithm keeps, contradictions refused, ignored options noted,
and a request moved to another algorithm (``compare``) with the options it has no use for reset.

``resolve`` calls ``ignored_options`` once per request; an option whose value cannot hold for the run is an
``InputError`` naming it, a harmless one a note in the report.
"""

from __future__ import annotations

from memplan.errors import InputError
from memplan.report import ArchConfig, EstimateRequest

ROLES_BY_ALGO = {
    "ppo": ("actor", "critic", "reference", "reward"),
    "grpo": ("actor", "reference", "reward"),
    "remax": ("actor", "reference", "reward"),
    "rloo": ("actor", "reference", "reward"),
    "dpo": ("actor", "reference"),
    "sft": ("actor",),
}
ROLES_WITH_REWARD = {algo for algo, roles in ROLES_BY_ALGO.items() if "reward" in roles}
DEFAULT_GROUP = {"grpo": 8, "rloo": 4}
GENERATES = {"ppo", "grpo", "remax", "rloo"}


def for_algorithm(request: EstimateRequest, algo: str) -> EstimateRequest:
    """``request`` under another algorithm (``compare``): the options that algorithm has no use for, which it
    would refuse (``ignored_options``), back at their defaults — an SFT reference, DPO's group and rollout, an RL run's
    ``seq_len`` (its sequences are then prompt_len + gen_len), the offload of a model it does not hold."""
    update: dict = {"algo": algo}
    if algo == "sft":
        update.update(ref=None, offload_ref=False)
    if algo not in ROLES_WITH_REWARD or (request.reward or ("rule" if algo == "grpo" else "model")) == "rule":
        update["offload_reward"] = False
    if algo in GENERATES:
        update["seq_len"] = None
    else:
        update.update(group_size=None, rollout_batch_size=None, rollout_engine="hf", **_DEFAULTS, **_HYBRID_DEFAULTS,
                      gather_for_generation=False, weight_sync_bucket_mb=0, entropy="none", gen_len_mean=None)
        if request.score_micro_batch_size is not None and request.rollout_engine == "hybrid-engine":
            update["score_micro_batch_size"] = None
    return EstimateRequest.model_validate({**request.model_dump(), **update})


VLLM_FIELDS = ("vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_sleep_mode",
               "vllm_max_num_batched_tokens")
"""Fields only a colocated vLLM reads (``rollout_engine='vllm'``)."""
_DEFAULTS = {name: EstimateRequest.model_fields[name].default for name in VLLM_FIELDS}
HYBRID_TP_FIELDS = ("inference_tp_size", "tp_gather_partition_size")
"""Fields only the hybrid engine reads (``rollout_engine='hybrid-engine'``, DeepSpeed's ``hybrid_engine`` config)."""
_HYBRID_DEFAULTS = {name: EstimateRequest.model_fields[name].default for name in HYBRID_TP_FIELDS}


def ignored_options(req: EstimateRequest, algo: str, ref_mode: str, reward_mode: str) -> list[str]:
    """Options the run does not use: an error naming the option when its value cannot hold for this run, a note
    when it is merely ignored (a harmless value). A field at its default is never flagged: a request re-validated
    from a dump (``compare``) sets every field."""
    notes = []
    if algo == "sft" and req.ref not in (None, "none"):
        raise InputError("ref", f"SFT trains against no reference model: {req.ref!r} cannot hold (leave it unset, or "
                         "'none')", req.ref)
    if algo not in GENERATES:
        for name in ("group_size", "rollout_batch_size"):
            value = getattr(req, name)
            if value is not None and value > 1:
                raise InputError(name, f"{algo} generates nothing (its sequences come from the data set): leave it "
                                 "unset", value)
            if value is not None:
                notes.append(f"{name} {value}: ignored, {algo} generates nothing")
        if req.rollout_engine != "hf":
            raise InputError("rollout_engine", f"{algo} generates nothing (its sequences come from the data set): "
                             "leave it 'hf' (the default)", req.rollout_engine)
    elif req.seq_len is not None:
        if req.seq_len != req.prompt_len + req.gen_len:
            raise InputError("seq_len", f"is the SFT/DPO sequence length; {algo}'s sequences are prompt_len + gen_len "
                             f"({req.prompt_len} + {req.gen_len}): set those instead", req.seq_len)
        notes.append(f"seq_len {req.seq_len}: ignored, {algo}'s sequences are prompt_len + gen_len")
    if req.gen_len_mean is not None and (algo not in GENERATES or not req.packing):
        notes.append(f"gen_len_mean {req.gen_len_mean}: ignored, " + (
            f"{algo}'s sequences are seq_len long" if algo not in GENERATES
            else "a padded micro batch is as long as its longest sequence (set packing to count the mean)"))
    if req.entropy == "none" and req.entropy_kernel != "compiled":
        notes.append(f"entropy_kernel {req.entropy_kernel}: ignored, the run takes no entropy (entropy 'none')")
    reward = algo in ROLES_WITH_REWARD and reward_mode == "model"
    if req.offload_ref and ref_mode == "none":
        raise InputError("offload_ref", "this run has no reference model (ref 'none'): leave it off", True)
    if req.offload_reward and not reward:
        why = f"reward {reward_mode!r}" if algo in ROLES_WITH_REWARD else f"{algo} scores no rollouts"
        raise InputError("offload_reward", f"this run has no reward model ({why}): leave it off", True)
    unused = {"ref_zero_stage": ref_mode != "separate", "reward_zero_stage": not reward,
              "reward_model": not reward, "critic_zero_stage": algo != "ppo", "critic_model": algo != "ppo",
              "offload_ref": ref_mode in ("lora-shared", "lora-adapter")}  # the actor's base: nothing to offload
    for name, ignored in unused.items():
        value = getattr(req, name)
        if ignored and value not in (None, False):
            why = {"ref_zero_stage": f"no separate reference (ref {ref_mode!r})", "offload_ref": "the reference is "
                   "the actor with its adapter off (ref 'lora-shared')", "critic_zero_stage": f"{algo} has no critic",
                   "critic_model": f"{algo} has no critic"}.get(name, "no reward model" + (
                       f" (reward {reward_mode!r}: set reward 'model' to use one)" if algo in ROLES_WITH_REWARD
                       else f" in {algo}"))
            notes.append(f"{name} {value if not isinstance(value, ArchConfig) else 'inline'}: ignored, {why}")
    if req.rollout_engine != "vllm" or algo not in GENERATES:
        for name in VLLM_FIELDS:
            value = getattr(req, name)
            if value == _DEFAULTS[name]:
                continue
            if req.rollout_engine == "remote" or isinstance(value, bool):
                notes.append(f"{name} {value}: ignored, it applies to rollout_engine 'vllm' (colocated)"
                             + (" — the remote engine's GPUs are not estimated" if req.rollout_engine == "remote"
                                else ""))
            else:
                raise InputError(name, f"applies to rollout_engine 'vllm' (colocated vLLM); this run generates with "
                                 f"{req.rollout_engine!r}: set rollout_engine 'vllm', or leave it unset", value)
    notes += _hybrid_tp_options(req, algo)
    return notes


def _hybrid_tp_options(req: EstimateRequest, algo: str) -> list[str]:
    """The hybrid engine's tensor-parallel options: ``inference_tp_size`` > 1 cannot hold on another engine (an
    error), ``tp_gather_partition_size`` is only read with ``inference_tp_size`` > 1 (a note). DeepSpeed reads both
    from its ``hybrid_engine`` config only (deepspeed 0.10.3 runtime/hybrid_engine.py)."""
    hybrid = req.rollout_engine == "hybrid-engine" and algo in GENERATES
    if not hybrid and req.inference_tp_size != 1:
        raise InputError("inference_tp_size", "splits DeepSpeed's hybrid engine's generation over GPUs; this run "
                         + (f"generates nothing ({algo})" if algo not in GENERATES
                            else f"generates with {req.rollout_engine!r}")
                         + ": set rollout_engine 'hybrid-engine', or leave it 1", req.inference_tp_size)
    if req.tp_gather_partition_size != _HYBRID_DEFAULTS["tp_gather_partition_size"] and req.inference_tp_size == 1:
        return [f"tp_gather_partition_size {req.tp_gather_partition_size}: ignored, DeepSpeed reads it only with "
                "inference_tp_size > 1"]
    return []
