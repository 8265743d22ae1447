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
VARLEN = "memplan_varlen"
"""``Setup.attention`` of a packed run: ``memplan.harness.packing.varlen_attention`` (no torch import here)."""


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
    """transformers attn_implementation: sdpa or eager (flash runs as sdpa on CPU); packed: ``VARLEN``."""
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
    packed_lengths: tuple[int, ...] = ()
    """Packed training micro batch (``harness.packing``): the tokens of each of its sequences; empty: padded rows
    of ``seq_len`` (then ``micro_batch_size`` rows). Packed, ``micro_batch_size`` is its number of sequences."""
    score_packed_lengths: tuple[int, ...] = ()
    """The same for a scoring forward (``score_micro_batch_size`` its number of sequences)."""
    entropy: str = "none"
    """Where the actor takes the entropy over the vocabulary: none, scoring, update or scoring+update."""
    entropy_kernel: str = "eager"
    """eager (verl's ``entropy_from_logits``), chunked (TRL's) or fp32-chunked (verl's ``_with_chunking``)."""
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


def _pack(req: EstimateRequest, pool: int, notes: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sequence lengths of a packed training and scoring micro batch (``EstimateRequest.packing``).

    Every sequence is prompt_len + gen_len_mean tokens long (the mean; default gen_len). Without a token cap a
    micro batch holds ``micro_batch_size`` (scoring: ``score_micro_batch_size``) of them; with a cap C, as many as
    it holds, ⌊C / mean⌋ (verl ``use_dynamic_bsz``, OpenRLHF ``max_tokens_per_gpu``), at most the ``pool`` the GPU
    has in the step, and one sequence of prompt_len + gen_len alone when that is longer than C.
    """
    if req.algo not in GENERATES:
        raise InputError("packing", f"the harness packs the RL algorithms' micro batches ({', '.join(GENERATES)}); "
                         f"{req.algo} is traced padded", req.packing)
    if req.attention == "eager":
        raise InputError("attention", "a packed micro batch needs a varlen attention kernel (flash or sdpa); "
                         "eager attention would hold a score matrix over the whole packed row", req.attention)
    if req.logprob_kernel not in ("log-softmax", "fused", "fp32-fused"):
        raise InputError("logprob_kernel", "the harness packs the 'log-softmax', 'fused' and 'fp32-fused' log-prob "
                         "paths", req.logprob_kernel)
    mean = req.gen_len_mean or req.gen_len
    if mean > req.gen_len:
        raise InputError("gen_len_mean", f"at most gen_len ({req.gen_len})", mean)
    mean_len, longest = req.prompt_len + mean, req.prompt_len + req.gen_len
    notes.append("packed micro batches: [1, tokens] rows through a varlen attention stand-in with flash-attn's "
                 "allocations (memplan.harness.packing)")
    sp = req.sequence_parallel
    if sp > 1:  # verl's cap is per GPU: max_token_len × sp over the group (memplan.harness.ulysses)
        notes.append(f"Ulysses sequence parallelism: traced as rank 0 of {sp} sequence-parallel GPUs, each "
                     "running 1/sp of every packed row (memplan.harness.ulysses)")

    def lengths(cap: int | None, seqs: int, what: str) -> tuple[int, ...]:
        if cap is None:
            return (mean_len,) * seqs
        cap *= sp
        if longest > cap:
            return (longest,)
        k = min(cap // mean_len, pool)
        if k * mean_len < cap:
            notes.append(f"{what}: {k} packed sequences × {mean_len} tokens = {k * mean_len} traced, under the "
                         f"token cap {cap}")
        return (mean_len,) * k

    train_cap = req.max_tokens_per_gpu
    score_cap = req.score_max_tokens_per_gpu or train_cap
    return (lengths(train_cap, req.micro_batch_size, "training micro batch"),
            lengths(score_cap, req.score_micro_batch_size or req.micro_batch_size, "scoring micro batch"))


def _entropy(req: EstimateRequest) -> tuple[str, str]:
    """(where, kernel) of the actor's entropy (``EstimateRequest.entropy``, ``entropy_kernel``)."""
    if req.entropy == "none":
        return "none", "eager"
    if req.algo not in GENERATES:
        raise InputError("entropy", f"the harness takes the actor's entropy in the RL algorithms "
                         f"({', '.join(GENERATES)})", req.entropy)
    if req.entropy_kernel == "compiled":
        raise InputError("entropy_kernel", "the harness runs no compiled kernel; trace 'eager', 'chunked' or "
                         "'fp32-chunked' (the estimate's 'compiled' is read from verl's source)", req.entropy_kernel)
    if req.logprob_kernel not in ("log-softmax", "fused"):
        raise InputError("logprob_kernel", "the harness takes the entropy of the logits the 'log-softmax' or 'fused' "
                         "path holds", req.logprob_kernel)
    return req.entropy, req.entropy_kernel


def _ulysses(req: EstimateRequest, packed: bool, *configs: dict | None) -> tuple[dict | None, ...]:
    """The config dicts, with ``sequence_parallel`` > 1 marked in them for ``memplan.harness.ulysses`` (every
    packed forward of every model runs Ulysses); checks it as verl's ``apply_monkey_patch`` asserts."""
    sp = req.sequence_parallel
    if sp == 1:
        return configs
    if not packed:
        raise InputError("sequence_parallel", "verl's Ulysses slices the packed row (use_remove_padding): set "
                         "packing, or use 1", sp)
    for raw in (c for c in configs if c is not None):
        heads = raw.get("num_attention_heads") or raw.get("n_head") or sp  # gpt2's name; else unchecked here
        kv = raw.get("num_key_value_heads") or heads
        if heads % sp or (kv % sp and sp % kv):
            raise InputError("sequence_parallel", f"must divide the attention heads ({heads}) and divide or be a "
                             f"multiple of the key/value heads ({kv})", sp)
    return tuple(None if c is None else {**c, "memplan_sequence_parallel": sp} for c in configs)


def resolve(req: EstimateRequest, *, pack: tuple[int, ...] | None = None) -> Setup:
    """Resolve ``req`` for the harness; unsupported combinations raise ``InputError`` naming the field.

    ``pack``: the token lengths of the sequences of every packed micro batch, training and scoring alike
    (prompt_len + answer tokens each, at most prompt_len + gen_len), instead of the request's (``_pack``).
    """
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
    train_pack = score_pack = ()
    if pack is not None or req.packing:
        pool = (req.rollout_batch_size or req.micro_batch_size) * (req.group_size or DEFAULT_GROUP.get(algo, 1))
        train_pack, score_pack = _pack(req, pool, notes)
        if pack is not None:
            longest = req.prompt_len + req.gen_len
            if not pack or any(not req.prompt_len < n <= longest for n in pack):
                raise InputError("pack", f"each sequence's tokens in ({req.prompt_len}, {longest}] (prompt_len, "
                                 "prompt_len + gen_len]", pack)
            if len(pack) > pool:
                raise InputError("pack", f"at most {pool} sequences: the rows one step generates", pack)
            train_pack = score_pack = tuple(pack)
    entropy, entropy_kernel = _entropy(req)
    configs = _ulysses(req, bool(train_pack), config_dict(req.model),
                       config_dict(req.critic_model or req.model, "critic_model") if algo == "ppo" else None,
                       (config_dict(req.reward_model or req.model, "reward_model")
                        if reward_mode == "model" and generates else None))
    return Setup(
        algo=algo, dtype=req.dtype, engine=req.engine, master_weights=master, optimizer=req.optimizer, optimizer_impl=impl,
        offload_optimizer=req.offload != "none", gradient_checkpointing=req.gradient_checkpointing,
        attention="eager" if req.attention == "eager" else VARLEN if train_pack else "sdpa", lora_rank=req.lora_rank,
        lora_targets=req.lora_targets, ref_mode=ref_mode, reward_mode=reward_mode,
        actor_config=configs[0], critic_config=configs[1], reward_config=configs[2],
        prompts=req.rollout_batch_size or req.micro_batch_size,
        group_size=(req.group_size or DEFAULT_GROUP.get(algo, 1)) if generates else 1,
        greedy_pass=algo == "remax", prompt_len=req.prompt_len, gen_len=req.gen_len,
        seq_len=req.prompt_len + req.gen_len if generates else (req.seq_len or req.prompt_len + req.gen_len),
        micro_batch_size=len(train_pack) or req.micro_batch_size,
        score_micro_batch_size=len(score_pack) or req.score_micro_batch_size or req.micro_batch_size,
        logprob_kernel=req.logprob_kernel, packed_lengths=train_pack, score_packed_lengths=score_pack,
        entropy=entropy, entropy_kernel=entropy_kernel, notes=tuple(notes),
    )
