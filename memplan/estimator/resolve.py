"""Request → resolved run: architectures looked up, defaults applied, contradictions rejected.

Everything after this module works on frozen dataclasses of plain ints; every check that can fail on user
input happens here (or in ``consistency``, which says which options a run uses) and raises ``InputError``
naming the field to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from memplan.errors import InputError
from memplan.estimator.formulas import DTYPE_BYTES, QUANT_BYTES_PER_PARAM, linear_params, lora_params
from memplan.estimator.consistency import (
    DEFAULT_GROUP, GENERATES, ROLES_BY_ALGO, ROLES_WITH_REWARD, for_algorithm, ignored_options,
)
from memplan.estimator.parallel import Sharding
from memplan.estimator.tokens import MicroBatch, micro_batch
from memplan.report import ArchConfig, EstimateRequest
from memplan.specs import ModelSpec, hashed_once



@hashed_once
@dataclass(frozen=True, kw_only=True, slots=True)
class RoleSetup:
    """One resident model: its architecture, what trains, how it is sharded."""

    role: str
    spec: ModelSpec
    num_params: int
    """Parameters of the model as loaded (backbone + scalar head for critic and reward)."""
    trainable_params: int
    lm_head: bool
    """Produces vocabulary logits (actor, reference) rather than a scalar (critic, reward)."""
    sharding: Sharding
    base_bytes_per_param: float
    """Bytes per frozen parameter (dtype, or int8/int4 average for a quantized base)."""
    lora: bool = False
    shares_weights_with: str | None = None
    adapter_params: int = 0
    """A frozen LoRA adapter of its own on the weights it shares (ref 'lora-adapter': AgileRL's
    ``use_separate_reference_adapter``, a copy of the actor's adapter beside it)."""
    quantized: bool = False
    """Its decoder layers' linears are bitsandbytes-quantized (``quantize_base``)."""
    hash_: int = field(init=False, repr=False, compare=False)
    """``hash`` of the compared fields (``hashed_once``): roles key the estimator's caches (``model_states``,
    the residents)."""

    @property
    def trainable(self) -> bool:
        return self.trainable_params > 0


class Run(NamedTuple):
    """A fully resolved run: cluster, batch geometry, roles. A named tuple: one is built per request, and a
    frozen dataclass's ``__init__`` (a guarded ``setattr`` per field) cost more than the rest of ``resolve``."""

    algo: str
    gpu_name: str
    capacity_bytes: int
    cuda_context_bytes: int
    processes_per_gpu: int
    """Processes sharing each GPU: each keeps its own runtime (CUDA context, cuBLAS workspace, NCCL buffers)."""
    num_gpus: int
    gpus_per_node: int
    e: int
    roles: tuple[RoleSetup, ...]
    rollout_seqs: int
    """Sequences generated at once per GPU: rollout prompts × group size."""
    greedy_pass: bool
    prompt_len: int
    gen_len: int
    train_seq_len: int
    train_seqs: int
    """Sequences per training forward/backward (DPO: chosen + rejected)."""
    score_seqs: int
    """Sequences per scoring forward (DPO: chosen + rejected)."""
    logit_tokens: int
    """Positions per sequence whose vocabulary logits the loss needs."""
    logprob_kernel: str
    """How log-probs and cross-entropy are taken: 'log-softmax', 'fused', 'fp32-fused' or 'chunked'
    (``logprob_kernel``)."""
    idle_offload: bool
    """Trained roles' states wait on the CPU while idle (``idle_offload``): see ``RoleSetup.sharding``."""
    experience_seqs: int
    gradient_checkpointing: bool
    eager_attention: bool
    lora_rank: int
    lora_targets: str
    rollout_engine: str
    vllm_utilization: float
    vllm_sleep: bool
    """Colocated vLLM frees its memory outside rollout; else its reservation stays in every phase."""
    vllm_tp: int
    """GPUs one colocated vLLM engine spreads its weights over."""
    gather_for_generation: bool
    """Sharded actor gathered whole to generate ('hf') or to sync a remote engine."""
    sync_bucket_bytes: int
    """The buffer the actor's weights are packed into for the sync to vLLM or a remote engine (0: none)."""
    tp: int
    placement: str
    groups: tuple[tuple[str, ...], ...]
    """Split placement: the roles of each GPU group (one process each, but a LoRA-shared reference's, the actor's),
    in role order; empty when colocated."""
    host_ram_bytes_per_node: int
    notes: tuple[str, ...] = ()
    """What ``resolve`` read differently from the request's letter, or ignored (the report's notes)."""
    vllm_batched_tokens: int = 8192
    """Colocated vLLM's ``max_num_batched_tokens`` (its profile run, its persistent input buffers)."""
    logprob_chunk_rows: int | None = None
    """Rows per tile of ``logprob_kernel='row-chunked'`` (None: its auto-tune, ``formulas.row_chunk_rows``)."""
    train_batch: MicroBatch | None = None
    """A training micro batch's tokens per GPU (``tokens.micro_batch``); None: train_seqs × train_seq_len."""
    score_batch: MicroBatch | None = None
    """A scoring forward's tokens per GPU; None: score_seqs × train_seq_len."""
    sp: int = 1
    """Sequence-parallel size: each micro batch's tokens split over sp GPUs (``sequence_parallel``)."""
    sp_mode: str = "ulysses"
    """How the sp GPUs share attention: 'ulysses' (all-to-all of heads) or 'ring' (OpenRLHF's K/V all-gather)."""
    ring_head_stride: int = 1
    """KV heads per all-gather of ring attention (``ring_head_stride``)."""
    entropy: str = "none"
    """Where the actor takes the vocabulary-wide entropy: 'none', 'scoring', 'update', 'scoring+update'."""
    entropy_kernel: str = "compiled"
    accumulates: bool | None = None
    """A step trains more than one micro batch (the earlier ones' gradients stay); None: rollout_seqs > train_seqs."""
    vllm_sleep_level: int = 2
    """vLLM's sleep level (``vllm_sleep_level``): 1 keeps its weights in host RAM while it sleeps."""
    inference_tp: int = 1
    """The hybrid engine's inference tensor-parallel size (``inference_tp_size``): each GPU generates tp × its
    own sequences with 1/tp of every layer's weights; 1 on any other engine."""
    tp_gather_partition: int = 8
    """Layers the hybrid engine gathers at once before slicing them (``tp_gather_partition_size``)."""

    def gpus_of(self, role: str) -> tuple[str, ...] | None:
        """The roles sharing ``role``'s GPUs under split placement; None when every role is on every GPU."""
        if not self.groups:
            return None
        return next(group for group in self.groups if role in group)


def _sleep_level(req: EstimateRequest) -> int:
    """vLLM's sleep level: the request's, else its framework's (OpenRLHF 1, the others 2); 2 when vLLM does not
    sleep (the level then changes nothing: one run, whatever the field says)."""
    if req.rollout_engine != "vllm" or not req.vllm_sleep_mode:
        return 2
    return req.vllm_sleep_level or (1 if req.framework == "openrlhf" else 2)


def _lookup(model: str | ArchConfig, field: str) -> ModelSpec:
    if isinstance(model, ArchConfig):
        return _cached_arch(model, frozenset(model.model_fields_set))
    try:
        return _cached_model(model)
    except InputError as err:
        if field == "model":
            raise
        raise InputError(field, str(err).split(": ", 1)[-1], model) from None


@lru_cache(maxsize=256)
def _cached_model(name: str) -> ModelSpec:
    from memplan.catalog import get_model

    return get_model(name)


@lru_cache(maxsize=256)
def _cached_arch(arch: ArchConfig, fields_set: frozenset[str]) -> ModelSpec:
    """``spec_from_arch``, keyed on the fields given too: an unset ``tie_word_embeddings`` takes the family's
    default, so two configs that compare equal can resolve differently."""
    from memplan.specs import spec_from_arch

    return spec_from_arch(arch)


@lru_cache(maxsize=256)
def _cached_cluster(text: str):
    from memplan.catalog import parse_cluster

    return parse_cluster(text)


_sharding = lru_cache(maxsize=1024, typed=True)(Sharding)
"""Roles (and requests) mostly share a few layouts; a cached frozen ``Sharding`` skips its ~10 µs ``__init__``."""
_role_setup = lru_cache(maxsize=1024, typed=True)(RoleSetup)
"""Likewise for roles: the same role recurs across a sweep's or a plan's requests, and one object per distinct
role makes it a cheap key for the estimator's per-role caches (``model_states``)."""
_lora_params = lru_cache(maxsize=1024)(lora_params)  # a loop over the layer's linears, per trained role

STAGE_FIELD = {"actor": "actor_zero_stage", "critic": "critic_zero_stage", "reference": "ref_zero_stage",
               "reward": "reward_zero_stage"}
OFFLOAD_FIELD = {"actor": "offload", "critic": "offload", "reference": "offload_ref", "reward": "offload_reward"}


def _split_groups(given: tuple[tuple[str, ...], ...], active: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The GPU groups of a split run: the given groups of ``active`` roles, every other role alone; each group's
    roles, and the groups by their first role, in role order."""
    seen: set[str] = set()
    for group in given:
        if not group:
            raise InputError("split_groups", "a group names at least one role", given)
        for role in group:
            if role not in active:
                raise InputError("split_groups", f"{role} is not one of this run's models ({', '.join(active)})",
                                 role)
            if role in seen:
                raise InputError("split_groups", f"{role} is in two groups", role)
            seen.add(role)
    groups = [tuple(role for role in active if role in group) for group in given]
    groups += [(role,) for role in active if role not in seen]
    return tuple(sorted(groups, key=lambda group: active.index(group[0])))


@lru_cache(maxsize=1024)
def _learned_positions(roles: tuple[RoleSetup, ...]) -> tuple[tuple[int, str], ...]:
    """Each distinct model of the roles with learned positions (OPT, GPT-2): its limit and name, in role order."""
    specs = {r.spec.name: r.spec for r in roles}.values()
    return tuple((spec.max_position_embeddings, spec.name) for spec in specs
                 if spec.max_position_embeddings and spec.model_type in ("opt", "gpt2"))


def _scalar_head(spec: ModelSpec) -> int:
    """Backbone + a bias-free Linear(h, 1) (transformers ``*ForSequenceClassification``, DeepSpeed-Chat v_head)."""
    return spec.backbone_params + spec.hidden_size


def resolve(req: EstimateRequest) -> Run:
    """Resolve and check a request."""
    cluster = _cached_cluster(req.gpus)
    n = cluster.num_gpus
    e = DTYPE_BYTES[req.dtype]
    algo = req.algo
    lora = req.lora_rank > 0
    ref_mode = req.ref or ("none" if algo == "sft" else "lora-shared" if lora else "separate")
    reward_mode = req.reward or ("rule" if algo == "grpo" else "model")
    master = req.master_weights if req.master_weights is not None else req.engine != "torch"
    impl = req.optimizer_impl
    if impl == "auto":
        impl = "fused" if req.engine == "deepspeed" else "foreach"

    if ref_mode in ("lora-shared", "lora-adapter") and not lora:
        raise InputError("ref", f"{ref_mode!r} needs LoRA: set lora_rank > 0, or ref 'separate'", ref_mode)
    if ref_mode == "lora-adapter" and req.rollout_engine == "hybrid-engine":
        raise InputError("ref", "DeepSpeed-Chat's hybrid engine has no second adapter: use 'lora-shared' or "
                         "'separate'", ref_mode)
    if req.quantize_base != "none" and not lora:
        raise InputError("quantize_base", "a quantized base trains only adapters: set lora_rank > 0 (QLoRA)",
                         req.quantize_base)
    if req.idle_offload != "none":
        if req.engine == "torch" and "optimizer" in req.idle_offload:  # Module.to moves parameters only
            raise InputError("idle_offload", "engine 'torch' parks the module with Module.to('cpu') (AgileRL's "
                             "use_memory_efficient_params), which moves its parameters, not the optimizer's states: "
                             "use 'params', or engine 'fsdp'", req.idle_offload)
        if req.engine == "deepspeed" and "params" in req.idle_offload:
            raise InputError("idle_offload", "DeepSpeed's offload_states (OpenRLHF's ds.enable_sleep) keeps the "
                             "16-bit weight shards on the GPU: use 'optimizer', or engine 'fsdp'", req.idle_offload)
        if req.offload != "none":
            raise InputError("idle_offload", "choose one: offload is FSDP2's CPUOffloadPolicy (verl's offload_policy, "
                             "the step on the CPU), idle_offload verl's param_offload / optimizer_offload",
                             req.idle_offload)
        if req.rollout_engine == "hybrid-engine":
            raise InputError("idle_offload", "DeepSpeed-Chat's hybrid engine keeps its models on the GPU: use "
                             "rollout_engine 'vllm' or 'hf'", req.idle_offload)
    notes = ignored_options(req, algo, ref_mode, reward_mode)
    if cluster.nodes_inferred:
        notes.append(f"gpus {req.gpus!r} read as {cluster.num_nodes} nodes × {cluster.gpus_per_node} GPUs (one "
                     f"{cluster.gpu.name} server holds {cluster.gpu.gpus_per_node}); host RAM and hybrid sharding are "
                     "per node")
    if req.rollout_engine == "hybrid-engine" and algo in GENERATES and req.engine != "deepspeed":
        raise InputError("engine", "DeepSpeed-Chat's hybrid engine is a DeepSpeed engine (deepspeed.initialize with "
                         "hybrid_engine enabled): use 'deepspeed'", req.engine)
    if req.tp > 1 and req.rollout_engine == "hybrid-engine" and algo in GENERATES:
        raise InputError("tp", "DeepSpeed-Chat's hybrid engine trains with ZeRO data parallelism only (its "
                         "--inference_tp_size shards generation, not training): use 1", req.tp)
    if req.tp > 1 and req.engine == "torch":
        raise InputError("tp", "engine 'torch' (one GPU or DDP) has no tensor parallelism: use 1, or engine 'fsdp'",
                         req.tp)
    if req.fsdp_version != 2 and req.engine != "fsdp":
        raise InputError("fsdp_version", f"picks FSDP1 or FSDP2 for engine 'fsdp'; engine is {req.engine!r}: set "
                         "engine 'fsdp', or leave fsdp_version at 2", req.fsdp_version)
    if n % req.tp:
        raise InputError("tp", f"must divide the number of GPUs ({n})", req.tp)
    if req.tp > 1 and cluster.gpus_per_node % req.tp:
        raise InputError("tp", f"must divide the GPUs per node ({cluster.gpus_per_node})", req.tp)

    actor_spec = _lookup(req.model, "model")
    if actor_spec.num_heads % req.tp:
        raise InputError("tp", f"must divide the attention heads ({actor_spec.num_heads})", req.tp)
    group_gpus, groups = n, ()
    if req.placement != "split" and req.split_groups:
        raise InputError("split_groups", "groups the roles' GPUs under placement 'split': set placement 'split', "
                         "or leave it empty", req.split_groups)
    if req.placement == "split":
        if req.processes_per_gpu > 1:
            raise InputError("processes_per_gpu", "under placement 'split' each GPU group runs one process per role "
                             "it holds (split_groups): leave it 1", req.processes_per_gpu)
        active = tuple(role for role in ROLES_BY_ALGO[algo]
                       if not (role == "reference" and ref_mode in ("none", "lora-shared", "lora-adapter"))
                       and not (role == "reward" and reward_mode == "rule"))
        groups = _split_groups(req.split_groups, active)
        group_gpus = n // len(groups)
        if ref_mode in ("lora-shared", "lora-adapter"):  # the actor's base: on the actor's GPUs, in its process
            groups = tuple(group + ("reference",) if "actor" in group else group for group in groups)
        if group_gpus < req.tp or group_gpus % req.tp:
            what = (f"each of {len(active)} models ({', '.join(active)}) on its own GPUs" if len(groups) == len(active)
                    else f"{len(groups)} groups of models ({', '.join('+'.join(g) for g in groups)}) on their own GPUs")
            raise InputError("placement", f"'split' puts {what}: needs at least {len(groups) * req.tp} GPUs, got {n}",
                             req.placement)
    if req.rollout_engine == "vllm" and algo in GENERATES:  # vLLM's ParallelConfig / ModelConfig checks
        vtp = req.vllm_tensor_parallel_size
        where = "the actor's GPU group" if req.placement == "split" else "the GPUs"
        if group_gpus % vtp:
            raise InputError("vllm_tensor_parallel_size", f"one vLLM engine spans {vtp} GPUs: it must divide "
                             f"{where} ({group_gpus})", vtp)
        if actor_spec.num_heads % vtp:
            raise InputError("vllm_tensor_parallel_size", f"must divide the attention heads ({actor_spec.num_heads}) "
                             "(vLLM: 'Total number of attention heads must be divisible by tensor parallel size')",
                             vtp)
    dp = group_gpus // req.tp
    shard_dp = min(dp, cluster.gpus_per_node // req.tp) if req.hybrid_shard else dp
    critic_spec = (_lookup(req.critic_model, "critic_model") if req.critic_model is not None and algo == "ppo"
                   else actor_spec)
    reward_spec = (_lookup(req.reward_model, "reward_model")
                   if req.reward_model is not None and algo in ROLES_WITH_REWARD and reward_mode != "rule"
                   else actor_spec)
    roles = _roles(
        algo, ref_mode, reward_mode, (req.actor_zero_stage, req.critic_zero_stage, req.ref_zero_stage,
                                      req.reward_zero_stage), req.zero_stage,
        req.engine, req.offload, req.idle_offload, req.offload_ref, req.offload_reward, shard_dp, req.tp, master,
        req.optimizer, impl,
        req.dtype, (actor_spec, critic_spec, reward_spec), req.quantize_base,
        req.lora_rank, req.lora_targets, fsdp_version=req.fsdp_version,
    )

    _check_inference_tp(req, algo, actor_spec, roles[0].sharding.zero_stage, group_gpus, cluster.gpus_per_node,
                        notes)
    prompts = req.rollout_batch_size or req.micro_batch_size
    group = req.group_size or DEFAULT_GROUP.get(algo, 1)
    generates = algo in GENERATES
    if generates:
        seq = req.prompt_len + req.gen_len
        # OpenRLHF ('fp32-fused') and AgileRL ('row-chunked'): every position's log-prob
        logit_tokens = seq if req.logprob_kernel in ("fp32-fused", "row-chunked") else req.gen_len
    else:
        seq = req.seq_len or (req.prompt_len + req.gen_len)
        logit_tokens = seq
    if req.weight_sync_bucket_mb and req.rollout_engine not in ("vllm", "remote"):
        raise InputError("weight_sync_bucket_mb", "packs the weights sent to vLLM or a remote engine: set "
                         "rollout_engine 'vllm' or 'remote', or leave it 0", req.weight_sync_bucket_mb)
    if req.logprob_chunk_rows is not None and req.logprob_kernel != "row-chunked":
        raise InputError("logprob_chunk_rows", "sizes the tiles of logprob_kernel 'row-chunked': set that kernel, or "
                         "leave it unset", req.logprob_chunk_rows)
    if req.logprob_kernel != "log-softmax" and generates and req.rollout_engine == "hybrid-engine":
        raise InputError("logprob_kernel", "DeepSpeed-Chat's trainer takes log-probs with log_softmax: use "
                         "'log-softmax' with rollout_engine 'hybrid-engine'", req.logprob_kernel)
    score_micro = req.score_micro_batch_size
    if score_micro is None:
        score_micro = req.micro_batch_size
    elif generates and req.rollout_engine == "hybrid-engine" and req.placement == "colocated":
        raise InputError("score_micro_batch_size", "DeepSpeed-Chat's hybrid engine scores each generation batch "
                         "whole (rollout_batch_size × group_size): leave it unset", score_micro)
    else:  # a micro batch holds at most the sequences there are: generated ones, or the step's DPO pairs
        score_micro = min(score_micro, prompts * group if generates else req.micro_batch_size)
    batches = _token_batches(req, algo, actor_spec, seq, logit_tokens, score_micro,
                             prompts * group if generates else None, group_gpus)
    for limit, name in _learned_positions(roles):  # learned positions cannot extrapolate
        if seq > limit:
            raise InputError("prompt_len" if generates else "seq_len",
                             f"{seq} tokens exceed {name}'s {limit} learned positions", seq)
    return Run(
        algo=algo, gpu_name=cluster.gpu.name, capacity_bytes=cluster.gpu.memory_bytes,
        cuda_context_bytes=req.cuda_context_bytes if req.cuda_context_bytes is not None
        else cluster.gpu.cuda_context_bytes, processes_per_gpu=req.processes_per_gpu,
        num_gpus=n, gpus_per_node=cluster.gpus_per_node, e=e, roles=tuple(roles),
        rollout_seqs=prompts * group if generates else 0, greedy_pass=algo == "remax",
        prompt_len=req.prompt_len, gen_len=req.gen_len, train_seq_len=seq,
        train_seqs=req.micro_batch_size * (2 if algo == "dpo" else 1),
        score_seqs=score_micro * (2 if algo == "dpo" else 1), logit_tokens=logit_tokens,
        logprob_kernel=req.logprob_kernel, idle_offload=req.idle_offload != "none",
        experience_seqs=prompts * group * (2 if algo == "remax" else 1) if generates else 0,
        gradient_checkpointing=req.gradient_checkpointing, eager_attention=req.attention == "eager",
        lora_rank=req.lora_rank, lora_targets=req.lora_targets, rollout_engine=req.rollout_engine,
        vllm_utilization=req.vllm_gpu_memory_utilization, vllm_sleep=req.vllm_sleep_mode,
        vllm_sleep_level=_sleep_level(req),
        vllm_tp=req.vllm_tensor_parallel_size, vllm_batched_tokens=req.vllm_max_num_batched_tokens or 8192,
        logprob_chunk_rows=req.logprob_chunk_rows,
        gather_for_generation=req.gather_for_generation, sync_bucket_bytes=req.weight_sync_bucket_mb << 20,
        tp=req.tp, placement=req.placement, groups=groups,
        host_ram_bytes_per_node=req.host_ram_bytes_per_node, notes=tuple(notes), **batches,
        inference_tp=req.inference_tp_size, tp_gather_partition=req.tp_gather_partition_size,
    )


def _check_inference_tp(req: EstimateRequest, algo: str, spec: ModelSpec, actor_stage: int, gpus: int,
                        gpus_per_node: int, notes: list[str]) -> None:
    """The hybrid engine's ``inference_tp_size`` as DeepSpeed and DeepSpeed-Chat take it: DeepSpeed-Chat's
    step-3 ``main.py`` asserts ZeRO stage 3 for the actor ("Zero stage 3 must be used to do Tensor sharding in the
    hybrid engine"); ``DeepSpeedHybridEngine.create_inference_module`` (deepspeed 0.10.3 runtime/hybrid_engine.py)
    makes groups of consecutive ranks, tp each (all inside a node when tp divides the GPUs per node); the
    containers' ``create_ds_model_config`` asserts the heads divide by tp."""
    tp = req.inference_tp_size
    if tp == 1 or req.rollout_engine != "hybrid-engine" or algo not in GENERATES:
        return  # another engine with tp > 1 is refused by ``ignored_options``
    if actor_stage != 3:
        raise InputError("inference_tp_size", f"the hybrid engine splits generation only under ZeRO-3 (DeepSpeed-Chat "
                         f"main.py asserts actor_zero_stage 3); the actor is at stage {actor_stage}: set zero_stage "
                         "3, or leave it 1", tp)
    if gpus % tp or gpus_per_node % tp:
        raise InputError("inference_tp_size", f"must divide the actor's GPUs ({gpus}) and the GPUs per node "
                         f"({gpus_per_node}): DeepSpeed's inference groups are {tp} consecutive ranks", tp)
    if spec.num_heads % tp:
        raise InputError("inference_tp_size", f"must divide the attention heads ({spec.num_heads}) (DeepSpeed: "
                         "'the attention_heads require to be divisible by the world_size')", tp)
    notes.append(f"inference_tp_size {tp}: the hybrid engine as DeepSpeed 0.9.x ran it (DeepSpeed-Chat's release); "
                 "from 0.9.3 (#3497) DeepSpeed slices the layers only when an mpu is passed, which DeepSpeed-Chat "
                 "does not (DeepSpeed issues #4080, #3998)")


def _check_ring(req: EstimateRequest, spec: ModelSpec, sp: int, packed: bool, gpus: int) -> None:
    """OpenRLHF's ring attention group, as it asserts: the packed row sliced (``ring_attn_utils.py::
    unpad_and_slice_tensor``; ``cli/train_ppo_ray.py`` turns packing_samples on), a (dp, sp, tp) device mesh
    (``utils/deepspeed/deepspeed.py``: dp = world // ring_attn_size // tp), and ring_flash_attn's
    ``llama3_flash_attn_varlen_forward``: ``assert nheads_k % heads_k_stride == 0`` over the GPU's KV heads."""
    if req.engine != "deepspeed":
        raise InputError("sequence_parallel_mode", "ring attention is OpenRLHF's, which trains with DeepSpeed: set "
                         "engine 'deepspeed', or use 'ulysses'", req.sequence_parallel_mode)
    if not packed:
        raise InputError("sequence_parallel", "OpenRLHF's ring attention slices the packed row (packing_samples): "
                         "set packing, or use 1", sp)
    if gpus % (sp * req.tp):
        raise InputError("sequence_parallel", f"times tp ({req.tp}) must divide the GPUs ({gpus})", sp)
    heads = max(spec.num_kv_heads // req.tp, 1)
    if heads % req.ring_head_stride:
        raise InputError("ring_head_stride", f"must divide the key/value heads per GPU ({heads})",
                         req.ring_head_stride)


def _token_batches(req: EstimateRequest, algo: str, spec: ModelSpec, seq: int, logit_tokens: int, score_micro: int,
                   pool: int | None, gpus: int) -> dict:
    """The Run fields of packing, token caps, Ulysses and entropy (none when the request uses none of them);
    checks them. ``pool``: the sequences one GPU generates in a step (None for SFT/DPO); ``gpus``: the actor's."""
    sp, packed = req.sequence_parallel, req.packing
    gen_mean = req.gen_len_mean
    extra: dict = {}
    if req.entropy != "none":
        if algo in ("sft", "dpo"):
            raise InputError("entropy", f"{algo} takes no entropy over the vocabulary: leave it 'none'", req.entropy)
        if req.logprob_kernel in ("chunked", "row-chunked"):
            raise InputError("entropy", f"logprob_kernel {req.logprob_kernel!r} never holds the logits the entropy "
                             "reads: use 'log-softmax' or 'fused', or leave entropy 'none'", req.entropy)
        extra.update(entropy=req.entropy, entropy_kernel=req.entropy_kernel)
    if gen_mean is not None and gen_mean > req.gen_len:
        raise InputError("gen_len_mean", f"is the mean answer length: at most gen_len ({req.gen_len})", gen_mean)
    for name, value in (("max_tokens_per_gpu", req.max_tokens_per_gpu),
                        ("score_max_tokens_per_gpu", req.score_max_tokens_per_gpu)):
        if value is not None and not packed:
            raise InputError(name, "a token cap sizes packed micro batches (verl's use_dynamic_bsz needs "
                             "use_remove_padding's packing): set packing, or leave it unset", value)
    ring = req.sequence_parallel_mode == "ring"
    if req.ring_head_stride != 1 and not (ring and sp > 1):
        raise InputError("ring_head_stride", "is ring attention's: set sequence_parallel > 1 with "
                         "sequence_parallel_mode 'ring', or leave it 1", req.ring_head_stride)
    if sp > 1 and ring:
        _check_ring(req, spec, sp, packed, gpus)
        extra.update(sp_mode="ring", ring_head_stride=req.ring_head_stride)
    elif sp > 1:
        if not packed:
            raise InputError("sequence_parallel", "verl's Ulysses slices the packed row (use_remove_padding): set "
                             "packing, or use 1", sp)
        if gpus % sp:  # fsdp_workers.py: a (dp, sp) device mesh, dp = world // sp
            raise InputError("sequence_parallel", f"must divide the GPUs ({gpus})", sp)
        if spec.num_heads % sp:  # verl monkey_patch.py::apply_monkey_patch's asserts
            raise InputError("sequence_parallel", f"must divide the attention heads ({spec.num_heads})", sp)
        if spec.num_kv_heads % sp and sp % spec.num_kv_heads:
            raise InputError("sequence_parallel", f"must divide the key/value heads ({spec.num_kv_heads}) or be a "
                             "multiple of them", sp)
        if req.tp > 1:
            raise InputError("sequence_parallel", "verl's FSDP workers run Ulysses without tensor parallelism: use "
                             "tp 1", sp)
    if not packed:
        return extra
    if req.attention == "eager":
        raise InputError("packing", "packed sequences need a variable-length attention kernel (flash-attn's varlen: "
                         "verl, OpenRLHF, TRL's padding_free): set attention 'flash'", True)
    if req.rollout_engine == "hybrid-engine" and algo in GENERATES:
        raise InputError("packing", "DeepSpeed-Chat's trainer pads its batches: leave packing off", True)
    mean = seq if algo not in GENERATES else req.prompt_len + (gen_mean or req.gen_len)
    # a packed forward's LM head runs over every packed position (verl's logits_rmpad)
    train_seqs = req.micro_batch_size * (2 if algo == "dpo" else 1)
    cap = req.max_tokens_per_gpu
    score_cap = req.score_max_tokens_per_gpu if req.score_max_tokens_per_gpu is not None else cap
    train = micro_batch(seqs=train_seqs, seq_len=seq, mean_len=mean, logit_tokens=logit_tokens, packed=True,
                        cap=cap, pool_seqs=pool, sp=sp)
    score = micro_batch(seqs=score_micro * (2 if algo == "dpo" else 1), seq_len=seq, mean_len=mean,
                        logit_tokens=logit_tokens, packed=True, cap=score_cap, pool_seqs=pool, sp=sp)
    accumulates = pool is not None and pool * mean > train.tokens * sp
    return {**extra, "train_batch": train, "score_batch": score, "sp": sp, "accumulates": accumulates}


@lru_cache(maxsize=1024)
def _roles(algo: str, ref_mode: str, reward_mode: str, role_stages: tuple[int | None, ...], zero_stage: int,
           engine: str, offload: str, idle_offload: str, offload_ref: bool, offload_reward: bool, shard_dp: int,
           tp: int, master: bool,
           optimizer: str, impl: str, dtype: str, specs: tuple[ModelSpec, ModelSpec, ModelSpec],
           quantize_base: str, lora_rank: int, lora_targets: str, fsdp_version: int = 2) -> tuple[RoleSetup, ...]:
    """Each resident model of the run, checked: the request's knobs ``resolve`` passes on (its role stages in
    ``STAGE_FIELD``'s order; the actor's, critic's and reward model's specs). Cached: the same roles recur
    across the batch sizes and lengths of a sweep's or a plan's requests."""
    e = DTYPE_BYTES[dtype]
    lora = lora_rank > 0
    actor_spec, critic_spec, reward_spec = specs
    stages = dict(zip(STAGE_FIELD, role_stages))
    roles: list[RoleSetup] = []
    for role in ROLES_BY_ALGO[algo]:
        if role == "reference" and ref_mode == "none":
            continue
        if role == "reward" and reward_mode == "rule":
            continue
        stage = stages[role] if stages[role] is not None else zero_stage
        field = STAGE_FIELD[role]
        if engine == "torch" and stage:
            raise InputError(field if stages[role] is not None else "zero_stage",
                             "engine 'torch' does not shard: use 0, or engine 'deepspeed'/'fsdp'", stage)
        trains = role in ("actor", "critic")
        offload_opt = trains and offload != "none"
        offload_params = (trains and offload == "optimizer+params") or (
            role == "reference" and offload_ref) or (role == "reward" and offload_reward)
        if engine == "deepspeed":
            if offload_opt and stage == 0:
                raise InputError("offload", "DeepSpeed offloads optimizer states from ZeRO stage 1 up: "
                                 "set zero_stage (or actor/critic_zero_stage) to 1, 2 or 3", offload)
            if offload_params and stage != 3:
                raise InputError(OFFLOAD_FIELD[role], f"parameter offload needs ZeRO stage 3; {role} has stage {stage} "
                                 f"(set {field.replace('_', '-')} 3)", True)
        if engine == "torch" and (offload_opt or offload_params):
            raise InputError("offload" if trains else f"offload_{'ref' if role == 'reference' else 'reward'}",
                             "engine 'torch' has no CPU offload: use engine 'deepspeed' or 'fsdp'", True)
        sharding = _sharding(
            engine=engine, zero_stage=stage, dp=shard_dp, tp=tp, offload_optimizer=offload_opt,
            offload_params=offload_params, master_weights=master, optimizer=optimizer, optimizer_impl=impl,
            dtype=dtype, idle_params=trains and "params" in idle_offload,
            idle_optimizer=trains and "optimizer" in idle_offload,
            fsdp_version=fsdp_version if engine == "fsdp" else 2,
        )
        spec = critic_spec if role == "critic" else reward_spec if role == "reward" else actor_spec
        lm_head = role in ("actor", "reference")
        params = spec.num_params if lm_head else _scalar_head(spec)
        quantized = quantize_base != "none" and role in ("actor", "reference")
        base_bpp = float(e)
        if quantized:
            q = linear_params(spec)
            # the trained model goes through peft's prepare_model_for_kbit_training (TRL, AgileRL base.py:4313):
            # every 16-bit parameter left unquantized (embeddings, norms, biases, the LM head) is cast to fp32
            # (peft 0.22 utils/other.py:232-238; the same since peft 0.4)
            rest = 4 if role == "actor" else e
            base_bpp = (q * QUANT_BYTES_PER_PARAM[quantize_base] + (params - q) * rest) / params
        if role == "reference" and ref_mode == "lora-shared":
            roles.append(_role_setup(role=role, spec=spec, num_params=params, trainable_params=0, lm_head=True,
                                   sharding=sharding, base_bytes_per_param=base_bpp, shares_weights_with="actor"))
            continue
        if role == "reference" and ref_mode == "lora-adapter":  # its own frozen adapter on the actor's base;
            # parked with the actor's module under idle offload (one Module.to moves both adapters)
            own = _sharding(**{**{f: getattr(sharding, f) for f in sharding.__dataclass_fields__},
                               "idle_params": "params" in idle_offload})
            roles.append(_role_setup(role=role, spec=spec, num_params=params, trainable_params=0, lm_head=True,
                                   sharding=own, base_bytes_per_param=base_bpp, lora=True, shares_weights_with="actor",
                                   adapter_params=_lora_params(spec, lora_rank, lora_targets)))
            continue
        adapter = lora and trains
        trainable = (_lora_params(spec, lora_rank, lora_targets) + (0 if lm_head else spec.hidden_size)
                     if adapter else (params if trains else 0))
        roles.append(_role_setup(role=role, spec=spec, num_params=params, trainable_params=trainable,
                               lm_head=lm_head, sharding=sharding, base_bytes_per_param=base_bpp, lora=adapter,
                               quantized=quantized))
    return tuple(roles)


__all__ = ["DEFAULT_GROUP", "GENERATES", "ROLES_BY_ALGO", "ROLES_WITH_REWARD", "RoleSetup", "Run", "for_algorithm",
           "resolve"]
