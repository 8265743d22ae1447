"""The change dimensions ``plan`` searches: one per knob the user allows (``KNOBS``), its options ordered
from the cheapest to run to the most memory-saving:

    placement                     colocated | split (unordered: two subtrees)
    lora_rank                     full fine-tuning, then 64, 16, 8 (the reference becomes the base, adapter off)
    offload                       none → optimizer → optimizer+params (trained roles); under FSDP with
                                  idle_offload allowed: none → idle optimizer → idle params+optimizer →
                                  CPUOffloadPolicy (verl's optimizer_offload, param_offload, offload_policy)
    offload_ref, offload_reward   False → True
    gradient_checkpointing        False → True
    tp                            1 → the divisors of GPUs per node and of attention heads
    <role> ZeRO stage             trained roles 0 → 1 → 2 → 3, frozen roles 0 → 3 (the engine stays as given)
    vllm_gpu_memory_utilization   0.9 → 0.2 (rollout_engine 'vllm')
    vllm_sleep_mode               off → on (rollout_engine 'vllm': TRL's vllm_enable_sleep_mode, OpenRLHF's
                                  vllm.enable_sleep, verl's default)
    score_micro_batch_size        the given one → halvings → 1 (when given: the scoring forwards' micro batch)
    logprob_kernel                log-softmax → fused (a fused cross-entropy: verl's, Liger's); a given chunked
                                  (TRL 1.16's own LM head) or fp32-fused (OpenRLHF's path) is kept
    sequence_parallel             1 → the divisors of GPUs per node dividing the attention heads (packed runs under
                                  engine 'fsdp' without TP: verl's Ulysses)
    max_tokens_per_gpu            none or the given cap → halvings down to one longest sequence (packed runs: verl's
                                  use_dynamic_bsz, OpenRLHF's dynamic batches)
    micro_batch_size              the largest that fits, at most the given one (bisection at each leaf)

A knob the run's framework cannot apply is never proposed (marked IMPOSSIBLE in the code); each combination
below is also refused by ``resolve`` when given, naming the field:

    knob                          impossible with                 why (the framework's behaviour)
    tp                            rollout_engine 'hybrid-engine'  DeepSpeed-Chat trains with ZeRO data parallelism
                                                                  only; its --inference_tp_size shards generation
                                  engine 'torch'                  plain PyTorch / DDP has no tensor parallelism
    placement 'split'             rollout_engine 'hybrid-engine'  DeepSpeedRLHFEngine initializes the actor,
                                                                  reference, critic and reward on every rank
                                                                  (planner only: a given split is still estimated)
    engine ≠ 'deepspeed'          rollout_engine 'hybrid-engine'  the hybrid engine is a DeepSpeed engine
    ZeRO stage 1                  engine 'fsdp'                   FSDP shards all (3), gradients and states (2) or
                                                                  nothing (0): no optimizer-only stage (planner only)
    offload, ZeRO stages          engine 'torch'                  nothing to shard or offload
    idle_offload                  rollout_engine 'hybrid-engine'  DeepSpeed-Chat keeps its models on the GPU;
                                  'params' under deepspeed        DeepSpeed's offload_states keeps the 16-bit
                                                                  weights (OpenRLHF's ds.enable_sleep); proposed
                                                                  under FSDP (verl), or when given
    vllm_gpu_memory_utilization,  rollout_engine ≠ 'vllm'         vLLM's own settings; a fraction at which vLLM's
    vllm_sleep_mode                                               KV cache cannot hold one sequence of the run
                                                                  (``algorithms.vllm_pool``) is never proposed
    logprob_kernel                rollout_engine 'hybrid-engine'  DeepSpeed-Chat's trainer takes log_softmax
    score_micro_batch_size        rollout_engine 'hybrid-engine'  DeepSpeed-Chat scores each generation batch whole
    sequence_parallel,            packing off                     verl's Ulysses and dynamic batches slice packed rows
    max_tokens_per_gpu                                            (use_remove_padding); Ulysses also needs engine
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memplan.errors import InputError
from memplan.estimator.resolve import resolve
from memplan.planner.candidates import GENERATES, OFFLOAD_LEVEL, ZERO_FIELDS
from memplan.report import EstimateRequest, Report

LORA_RANKS = (64, 16, 8)
"""The LoRA ranks the lora_rank dimension offers after full fine-tuning, largest first."""
VLLM_FRACTIONS = (0.9, 0.7, 0.5, 0.4, 0.3, 0.2)
"""The vllm_gpu_memory_utilization dimension's fractions, largest first (those at which vLLM starts)."""
IDLE = "idle:"
"""Prefix of the offload dimension's options that are an ``idle_offload`` (FSDP), not a CPU offload."""
TRAINED = ("actor", "critic")
MIN_STAGE = {"none": 0, "optimizer": 1, "optimizer+params": 3}
"""Lowest ZeRO/FSDP stage of a trained role under each CPU offload (ZeRO-Offload shards what it offloads)."""


def _cluster(request: EstimateRequest) -> tuple[int, int, str]:
    """(GPUs, GPUs per node, catalog GPU name)."""
    from memplan.catalog import parse_cluster

    cluster = parse_cluster(request.gpus)
    return cluster.num_gpus, cluster.gpus_per_node, cluster.gpu.name


@dataclass(frozen=True, slots=True)
class Dim:
    """One change dimension of the search: a knob (or a role's stage) and its options in search order."""

    name: str
    options: tuple[Any, ...]
    """Cheapest first; the last is the most memory-saving (placement: unordered)."""
    host_least: int = -1
    """The option that keeps the least on the host (-1: the last)."""


def dimensions(given: EstimateRequest, base: Report, allow: set[str], side: str) -> list[Dim]:
    """One dimension per knob: the saving side of the given value ('fix') or its cheap side ('relax'). When
    the host's RAM is exceeded ('both'), the saving side from the given value with its offload undone
    (``undo``): undoing an offload saves host RAM.

    A frozen role's dimension pairs its stage with its parameter offload: (0, off) → (3, off) → (3, on).
    """
    roles = [m.role for m in base.models if not m.shares_weights_with]
    shards = given.engine != "torch"  # plain PyTorch neither shards nor offloads

    def dim(name: str, options, current: Any, key=None, host_least: Any = None, undo: Any = None) -> Dim:
        full = sorted({*options, current}, key=key)
        i = full.index(current)
        if side == "both" and undo in full:
            i = min(i, full.index(undo))
        kept = tuple(full[i:] if side != "relax" else full[: i + 1])
        return Dim(name, kept, kept.index(host_least) if host_least in kept else -1)

    n, per_node, _ = _cluster(given)
    heads = _actor_heads(given)
    tps = [d for d in range(1, per_node + 1) if per_node % d == 0 and heads % d == 0 and n % d == 0]
    dschat = given.rollout_engine == "hybrid-engine" and given.algo in GENERATES
    if dschat or given.engine == "torch":  # IMPOSSIBLE: DeepSpeed-Chat trains with ZeRO only; plain DDP has no TP
        tps = []
    placements = (given.placement, "split" if given.placement == "colocated" else "colocated")
    if "placement" not in allow or dschat:  # IMPOSSIBLE: DeepSpeed-Chat's engine holds every model on every GPU
        placements = (given.placement,)
    dims = [
        Dim("placement", placements),
        dim("lora_rank", (0, *LORA_RANKS) if "lora" in allow and given.lora_rank == 0 else (), given.lora_rank,
            key=lambda r: (r > 0, -r)),
        _offload_dim(given, allow, dim, side, shards),
        dim("gradient_checkpointing", (False, True) if "gradient_checkpointing" in allow else (),
            given.gradient_checkpointing),
        dim("tp", tps if "tp" in allow else (), given.tp),
    ]
    for role in roles:
        explicit = getattr(given, ZERO_FIELDS[role])
        stage = explicit if explicit is not None else given.zero_stage
        stages = (0, 1, 2, 3) if "zero_stage" in allow and shards else (stage,)
        if given.engine == "fsdp":  # IMPOSSIBLE: FSDP has no stage 1 (NO_SHARD 0, SHARD_GRAD_OP 2, FULL_SHARD 3)
            stages = tuple(s for s in stages if s != 1 or s == stage)
        if role in ("actor", "critic"):
            dims.append(dim(role, stages, stage))
            continue
        offloaded = given.offload_ref if role == "reference" else given.offload_reward
        knob = "offload_ref" if role == "reference" else "offload_reward"
        pairs = [(s, o) for s, o in ((0, False), (3, False), (3, True)) if s in stages
                 and (o == offloaded or knob in allow and shards)]
        unloaded = [p for p in [*pairs, (stage, offloaded)] if not p[1]]
        dims.append(dim(role, pairs, (stage, offloaded), key=lambda p: (p[1], p[0]),
                        host_least=max(unloaded, key=lambda p: p[0]) if unloaded else None, undo=(stage, False)))
    if given.rollout_engine == "vllm" and given.algo in GENERATES:
        dims.append(_vllm_dim(given, allow, dim, side))
        dims.append(dim("vllm_sleep_mode", (False, True) if "vllm_sleep_mode" in allow else (),
                        given.vllm_sleep_mode))
    if not (given.rollout_engine == "hybrid-engine" and given.algo in GENERATES):  # DeepSpeed-Chat: its own path
        own = given.logprob_kernel in ("chunked", "fp32-fused", "row-chunked")  # TRL's, OpenRLHF's, AgileRL's: kept
        kernels = ("log-softmax", "fused") if "logprob_kernel" in allow and not own else ()
        dims.append(dim("logprob_kernel", kernels, given.logprob_kernel,
                        key=("log-softmax", "fused", "fp32-fused", "chunked", "row-chunked").index))
    dims += _token_dims(given, allow, dim, per_node, n)
    score = given.score_micro_batch_size
    if score is not None and given.algo != "sft":
        halvings = tuple(sorted({score >> k for k in range(score.bit_length())}, reverse=True))  # score … 1
        dims.append(dim("score_micro_batch_size", halvings if "score_micro_batch_size" in allow else (), score,
                        key=lambda v: -v))
    return dims


def _token_dims(given: EstimateRequest, allow: set[str], dim, per_node: int, n: int) -> list[Dim]:  # noqa: ANN001
    """Packed runs only (verl's use_remove_padding, OpenRLHF's packing_samples): Ulysses' sequence-parallel size —
    under engine 'fsdp' without TP (verl's FSDP workers; IMPOSSIBLE elsewhere), the divisors of a node's GPUs that
    divide the attention heads and divide (or are a multiple of) the KV heads (verl's ``apply_monkey_patch``
    asserts) — and the token cap of a training micro batch: the given one (or none), then halvings down to one
    longest sequence (verl's use_dynamic_bsz, OpenRLHF's train.max_tokens_per_gpu)."""
    if not given.packing:
        return []
    dims = []
    if given.engine == "fsdp" and given.tp == 1:
        from memplan.catalog import get_model

        spec = get_model(given.model) if isinstance(given.model, str) else None
        heads = _actor_heads(given)
        kv = spec.num_kv_heads if spec is not None else (given.model.num_key_value_heads or heads)
        sps = [d for d in range(1, per_node + 1) if per_node % d == 0 and n % d == 0 and heads % d == 0
               and (kv % d == 0 or d % kv == 0)] if "sequence_parallel" in allow else []
        dims.append(dim("sequence_parallel", sps, given.sequence_parallel))
    if "max_tokens_per_gpu" in allow and given.algo != "dpo":
        longest = given.seq_len or given.prompt_len + given.gen_len
        top = given.max_tokens_per_gpu or given.micro_batch_size * longest
        caps = sorted({top >> k for k in range(top.bit_length()) if top >> k >= longest} | {top}, reverse=True)
        current = given.max_tokens_per_gpu
        options = ([None] if current is None else []) + caps
        dims.append(dim("max_tokens_per_gpu", options, current, key=lambda c: -(c or 1 << 62)))
    return dims


def _vllm_dim(given: EstimateRequest, allow: set[str], dim, side: str) -> Dim:  # noqa: ANN001
    """vLLM's memory fraction, only the fractions at which vLLM starts (its KV cache holds a sequence of the run:
    ``algorithms.vllm_pool``; no other knob of the plan changes that). When the given fraction is too small for
    vLLM to start, every fraction that starts is an option, the smallest last."""
    fractions = VLLM_FRACTIONS if "vllm_gpu_memory_utilization" in allow else ()
    starts = [u for u in fractions if vllm_starts(given, u)]
    if vllm_starts(given, given.vllm_gpu_memory_utilization) or not starts:
        return dim("vllm_gpu_memory_utilization", starts, given.vllm_gpu_memory_utilization, key=lambda u: -u)
    return Dim("vllm_gpu_memory_utilization", tuple(sorted(starts, reverse=True)))


def vllm_starts(given: EstimateRequest, fraction: float) -> bool:
    from memplan.estimator.algorithms import vllm_pool

    try:
        run = resolve(given.model_copy(update={"vllm_gpu_memory_utilization": fraction}))
    except InputError:
        return False
    return vllm_pool(run, run.roles[0]).sequences >= 1


def _offload_dim(given: EstimateRequest, allow: set[str], dim, side: str, shards: bool) -> Dim:  # noqa: ANN001
    """The trained roles' offload, one chain by memory (``IDLE``-prefixed options are idle offloads): DeepSpeed's
    and FSDP's CPU offload; under FSDP (verl), the idle offloads first: none → idle optimizer (or params, if
    given) → idle params+optimizer → CPUOffloadPolicy; under DeepSpeed with OpenRLHF's idle optimizer given:
    none → idle optimizer → optimizer → optimizer+params (offered only where given: it is OpenRLHF's)."""
    cpu = tuple(OFFLOAD_LEVEL) if "offload" in allow and shards else ()
    if given.engine == "fsdp" and given.rollout_engine != "hybrid-engine" and (
            "idle_offload" in allow or given.idle_offload != "none"):
        middle = given.idle_offload if given.idle_offload in ("params", "optimizer") else "optimizer"
        chain = ("none", IDLE + middle, IDLE + "params+optimizer",
                 given.offload if given.offload != "none" else "optimizer+params")
    elif given.engine == "deepspeed" and given.idle_offload != "none":
        chain = ("none", IDLE + given.idle_offload, "optimizer", "optimizer+params")
    elif given.idle_offload != "none":  # engine 'torch': its parked parameters, kept as given (no CPU offload)
        chain = ("none", IDLE + given.idle_offload)
    else:
        return dim("offload", cpu, given.offload, key=OFFLOAD_LEVEL.get,
                   host_least=given.offload if side == "fix" else "none", undo="none")
    options = tuple(o for o in chain if o == "none" or (o.startswith(IDLE) and "idle_offload" in allow)
                    or (not o.startswith(IDLE) and o in cpu))
    current = IDLE + given.idle_offload if given.idle_offload != "none" else given.offload
    rank = {o: i for i, o in enumerate(chain)}
    return dim("offload", options, current, key=rank.get, host_least=current if side == "fix" else "none",
               undo="none")


def _actor_heads(request: EstimateRequest) -> int:
    if isinstance(request.model, str):
        from memplan.catalog import get_model

        return get_model(request.model).num_heads
    return request.model.num_attention_heads


