"""Request → what the harness runs: models, batch geometry and knobs, with the request's defaults applied.

The harness resolves the request on its own (it does not reuse the estimator's resolution) so that a trace
stays an independent check of the estimator. The defaults are the ones ``memplan.report.EstimateRequest``
documents: reference ``lora-shared`` with LoRA, ``none`` for SFT, ``separate`` otherwise; reward ``rule`` for
GRPO; group size 8 for GRPO, 4 for RLOO; master weights unless ``engine='torch'``; AdamW ``fused`` under
DeepSpeed, ``foreach`` otherwise.

What a single traced process is (world size 1): every resident model in full on one device. Sharding
(``zero_stage``, more GPUs), tensor parallelism, vLLM and the hybrid engine are not run; the report's notes
say so. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import InputError
from memplan.report import ArchConfig, EstimateRequest

DEFAULT_GROUP = {"grpo": 8, "rloo": 4}
GENERATES = ("ppo", "grpo", "remax", "rloo")
PHASES = {
    "ppo": ("rollout", "scoring", "actor_update", "critic_update"),
    "grpo": ("rollout", "scoring", "actor_update"),
    "remax": ("rollout", "scoring", "actor_update"),
    "rloo": ("rollout", "scoring", "actor_update"),
    "dpo": ("scoring", "actor_update"),
    "sft": ("actor_update",),
}
_INTERMEDIATE_KEY = {"opt": "ffn_dim", "gpt2": "n_inner"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Setup:
    """One resolved harness run."""

    algo: str
    dtype: str
    """bf16, fp16 or fp32: the models' weights and activations."""
    engine: str
    """deepspeed, fsdp or torch: picks the optimizer layout (``steps.optim.engine_kind``)."""
    master_weights: bool
    """fp32 master copy + fp32 optimizer states of 16-bit trainable weights (DeepSpeed, FSDP MixedPrecision)."""
    optimizer: str
    optimizer_impl: str
    """foreach, fused or for-loop (``auto`` resolved)."""
    offload_optimizer: bool
    """Masters, fp32 gradients and optimizer states live on the host (DeepSpeed ZeRO-Offload)."""
    gradient_checkpointing: bool
    attention: str
    """transformers attn_implementation: sdpa or eager (flash runs as sdpa on CPU)."""
    lora_rank: int
    lora_targets: str
    ref_mode: str
    """separate, lora-shared or none."""
    reward_mode: str
    """model or rule."""
    actor_config: dict
    critic_config: dict | None
    reward_config: dict | None
    prompts: int
    """Prompts per generation call."""
    group_size: int
    greedy_pass: bool
    """ReMax: a greedy rollout after the sampled one."""
    prompt_len: int
    gen_len: int
    seq_len: int
    """Training sequence length: prompt + answer for RL, ``seq_len`` for SFT/DPO."""
    micro_batch_size: int
    score_micro_batch_size: int
    """Sequences per scoring forward (``EstimateRequest.score_micro_batch_size``, default the micro batch)."""
    logprob_kernel: str = "log-softmax"
    notes: tuple[str, ...] = ()

    @property
    def phases(self) -> tuple[str, ...]:
        if self.algo == "dpo" and self.ref_mode == "none":
            return ("actor_update",)
        return PHASES[self.algo]

    @property
    def rollout_seqs(self) -> int:
        """Sequences generated at once: prompts × group size."""
        return self.prompts * self.group_size


def config_dict(model: str | ArchConfig, field: str = "model") -> dict:
    """The config.json dict of a catalog model or an inline architecture (names as transformers reads them)."""
    if isinstance(model, ArchConfig):
        raw = model.model_dump(exclude_none=True)
        for key in ("tie_word_embeddings", "max_position_embeddings"):
            if key not in model.model_fields_set:
                raw.pop(key)  # let the family's default apply (gpt2, opt are tied)
        if raw["model_type"] != "mixtral":
            raw.pop("num_local_experts"), raw.pop("num_experts_per_tok")
        mt = raw["model_type"]
        if mt in _INTERMEDIATE_KEY:
            raw[_INTERMEDIATE_KEY[mt]] = raw.pop("intermediate_size")
        if mt == "opt":
            raw["word_embed_proj_dim"] = raw["hidden_size"]
        return raw
    from memplan.catalog import get_model_config

    try:
        return get_model_config(model)
    except InputError as err:
        if field == "model":
            raise
        raise InputError(field, str(err).split(": ", 1)[-1], model) from None


def resolve(req: EstimateRequest) -> Setup:
    """Resolve ``req`` for the harness; unsupported combinations raise ``InputError`` naming the field."""
    algo, lora = req.algo, req.lora_rank > 0
    ref_mode = req.ref or ("none" if algo == "sft" else "lora-shared" if lora else "separate")
    reward_mode = req.reward or ("rule" if algo == "grpo" else "model")
    if algo in ("sft", "dpo"):
        reward_mode = "rule"  # no reward model in supervised / preference training
    if algo == "sft":
        ref_mode = "none"
    if req.logprob_kernel == "row-chunked":
        raise InputError("logprob_kernel", "the harness has no stand-in for the row-chunked LM head (a compiled "
                         "kernel); use 'chunked'", req.logprob_kernel)
    if ref_mode == "lora-adapter":
        raise InputError("ref", "the harness runs no second LoRA adapter; use 'lora-shared' (the estimate's "
                         "'lora-adapter' adds the adapter's resident bytes and runs the reference with adapters on)",
                         ref_mode)
    if ref_mode == "lora-shared" and not lora:
        raise InputError("ref", "'lora-shared' needs LoRA: set lora_rank > 0, or ref 'separate'", ref_mode)
    if req.quantize_base != "none":
        raise InputError("quantize_base", "the harness cannot run quantized (bitsandbytes) weights; use 'none'",
                         req.quantize_base)
    if req.optimizer == "adamw-8bit":
        raise InputError("optimizer", "the harness has no 8-bit AdamW (bitsandbytes); use adamw, sgd or adafactor",
                         req.optimizer)
    impl = req.optimizer_impl
    if impl == "auto":
        impl = "fused" if req.engine == "deepspeed" else "foreach"
    master = req.master_weights if req.master_weights is not None else req.engine != "torch"
    if req.dtype == "fp32":
        master = False

    notes = []
    if req.zero_stage or any(s for s in (req.actor_zero_stage, req.critic_zero_stage,
                                         req.ref_zero_stage, req.reward_zero_stage) if s):
        notes.append("ZeRO stages are not applied: traced as one process holding every model in full (world size 1)")
    if req.tp > 1:
        notes.append(f"tensor parallelism (tp={req.tp}) is not applied: traced with tp=1")
    if req.rollout_engine != "hf":
        notes.append(f"rollout engine {req.rollout_engine!r} is not run: rollout traced with the HF decode loop")
    if req.placement == "split":
        notes.append("placement 'split' is not applied: every role traced in the same process")
    if req.offload_ref or req.offload_reward or req.offload == "optimizer+params":
        notes.append("parameter offload is not applied (needs ZeRO-3 / FSDP sharding)")
    if req.idle_offload != "none":
        notes.append(f"idle offload ({req.idle_offload}) is not applied: every state traced on the device")
    if req.attention == "flash":
        notes.append("attention 'flash' traced as SDPA (CPU flash kernel; saves what flash attention saves)")

    generates = algo in GENERATES
    return Setup(
        algo=algo, dtype=req.dtype, engine=req.engine, master_weights=master, optimizer=req.optimizer, optimizer_impl=impl,
        offload_optimizer=req.offload != "none", gradient_checkpointing=req.gradient_checkpointing,
        attention="eager" if req.attention == "eager" else "sdpa", lora_rank=req.lora_rank,
        lora_targets=req.lora_targets, ref_mode=ref_mode, reward_mode=reward_mode,
        actor_config=config_dict(req.model),
        critic_config=config_dict(req.critic_model or req.model, "critic_model") if algo == "ppo" else None,
        reward_config=(config_dict(req.reward_model or req.model, "reward_model")
                       if reward_mode == "model" and generates else None),
        prompts=req.rollout_batch_size or req.micro_batch_size,
        group_size=(req.group_size or DEFAULT_GROUP.get(algo, 1)) if generates else 1,
        greedy_pass=algo == "remax", prompt_len=req.prompt_len, gen_len=req.gen_len,
        seq_len=req.prompt_len + req.gen_len if generates else (req.seq_len or req.prompt_len + req.gen_len),
        micro_batch_size=req.micro_batch_size,
        score_micro_batch_size=req.score_micro_batch_size or req.micro_batch_size,
        logprob_kernel=req.logprob_kernel, notes=tuple(notes),
    )
