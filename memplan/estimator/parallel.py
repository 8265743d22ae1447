"""Model states of one role on one GPU under an engine's sharding: DeepSpeed ZeRO-0/1/2/3, PyTorch FSDP2,
plain PyTorch (one GPU or DDP), with CPU offload and tensor parallelism.

Per trained parameter (Rajbhandari et al. 2020, ZeRO, §3 and §5), mixed precision, N data-parallel GPUs:

    stage   weights   gradients   fp32 master + Adam m, v     (bytes; e = 2 for bf16/fp16)
    0       e         e           12
    1       e         e           12/N
    2       e         e/N         12/N
    3       e/N       e/N         12/N

Engine buffers, with the defaults read from DeepSpeed 0.16–0.19 ``runtime/zero/config.py``:
``reduce_bucket_size`` = 5e8 elements (one contiguous gradient bucket of that many elements, in the
gradient dtype, ZeRO-1/2/3), ``stage3_prefetch_bucket_size`` = 5e7, ``stage3_max_live_parameters`` = 1e9,
``sub_group_size`` = 1e9 (ZeRO-3 converts one sub-group of gradients to fp32 at the step). DeepSpeed's
optimizer step turns the bf16 gradient partition into fp32 (4Ψ/N) before FusedAdam runs.

ZeRO stage 0 is not "no engine": DeepSpeed wraps the optimizer by dtype (``engine.py::get_data_types``,
``_do_optimizer_sanity_check``). bf16 without ZeRO accumulates gradients in fp32 and gets ``BF16_Optimizer``
(``runtime/bf16_optimizer.py``): at construction an fp32 master and a zero-filled fp32 gradient buffer as
large as the trainable weights (4Ψ + 4Ψ, kept for the engine's lifetime: an engine buffer); each 16-bit
gradient is added into its slice of the buffer one parameter at a time; and the 16-bit gradients are zeroed
after the step, never freed (the engine skips ``zero_grad`` for bf16 without ZeRO), so from the first backward
on they stay resident in every phase. fp16 gets ``FP16_Optimizer`` (``runtime/fp16/fused_optimizer.py``):
its step casts every 16-bit gradient to fp32 in one list and flattens it, so the 16-bit gradients, the fp32
copies and the flat fp32 gradient (2Ψ + 4Ψ + 4Ψ) are alive at once; it frees all of them after the step.
memplan used to count 16-bit and fp32 gradients coexisting at the step only; the tracer
(``memplan.harness.steps.optim``) now runs both optimizers' allocation order, and both agree.

FSDP2 (``fully_shard``) with ``MixedPrecisionPolicy(param_dtype=bf16)`` keeps fp32 sharded parameters
(they are the master weights), fp32 sharded gradients and fp32 Adam states: 16Ψ/N, plus the bf16 unsharded
parameters of the layers being computed. torch's AdamW defaults to the foreach implementation on CUDA,
whose ``_foreach_sqrt`` allocates a temporary as large as the parameter group (its state dtype).

What FSDP2 holds unsharded (``fsdp_unsharded``), with ``fully_shard`` on every decoder layer and then on the
root, as torchtitan and verl wrap models: U parameters per layer, R = Ψ − L·U in the root (embeddings, final
norm, head), H those of the head whose gradient backward makes first (the LM head, tied or not; a critic's or
reward model's h), e bytes per unsharded element, r per reduce-scatter element (fp32 ``reduce_dtype``: 4).
Read from torch 2.13 ``distributed/fsdp/_fully_shard/_fsdp_param_group.py`` and checked against rank-0
traces (``memplan.harness.sharded``, tests/test_sharded.py):

* a forward unshards the root first and keeps it to the end of the forward; each unit's all-gather output
  (as large as the unit) is kept until the next unit's copy-out (``wait_for_unshard``: "free the all-gather
  result"), so a copy-out holds two all-gather outputs and the new unit: inside layer k, e·(R + 2U) beside
  its activations; at a copy-out, e·(R + 2U + max(R, U)) (the root's output lives until layer 0's); at the
  LM head, e·(R + U) beside the logits;
* stage 3 (``reshard_after_forward=True``): each layer is resharded after its forward; backward keeps the root,
  the head's gradient, layer k's weights and gradients, layer k − 1's prefetched all-gather output and layer
  k + 1's reduce-scatter input (``reduce_scatter_states``, one in flight): e·(R + H + 3U) + r·U;
* stage 2 (``reshard_after_forward=False``): layers stay unsharded from a model's first forward in a step to
  their own backward, also while other models compute: e·(Ψ − R). The first forward ends with e·(Ψ + 2U) at
  its last copy-out; later ones re-gather the root, whose all-gather output lives through the forward:
  e·(Ψ + R); backward starts with e·(Ψ + H) + max(e·U, r·U) and frees a layer at a time;
* after a forward without autograd the root is resharded too (verl's ``_reshard_if_needed``);
* the root's gradients are reduced last, after its weights are resharded: e·R gradients beside their r·R
  reduce-scatter input — larger than a layer's moment when the vocabulary is (Llama 3, Qwen 2.5);
* the sharded gradients, r·Ψ/N, fill in as backward goes: whole at its end.

On one GPU FSDP2 keeps no all-gather outputs, and memplan keeps the per-layer approximation of ``gather``.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.estimator.formulas import optimizer_state_bytes_per_param

REDUCE_BUCKET_ELEMS = 500_000_000
PREFETCH_BUCKET_ELEMS = 50_000_000
SUB_GROUP_ELEMS = 1_000_000_000
DDP_BUCKET_BYTES = 25 * 1024**2


@dataclass(frozen=True, kw_only=True, slots=True)
class Sharding:
    """How one role is laid out: engine, stage, data-parallel and tensor-parallel degrees, offload."""

    engine: str
    zero_stage: int
    dp: int
    """GPUs the role's states are sharded over (N, or GPUs per node with hybrid sharding)."""
    tp: int
    offload_optimizer: bool
    offload_params: bool
    master_weights: bool
    optimizer: str
    optimizer_impl: str
    """Resolved: 'foreach', 'fused' or 'for-loop'."""
    dtype: str = "bf16"
    """The 16-bit dtype of the weights: DeepSpeed picks ``BF16_Optimizer`` or ``FP16_Optimizer`` by it."""
    idle_params: bool = False
    """verl's ``param_offload``: the weight shards wait on the CPU while the role is idle (trained roles)."""
    idle_optimizer: bool = False
    """verl's ``optimizer_offload``: the optimizer states wait on the CPU outside the role's update."""
    fsdp_version: int = 2
    """``engine='fsdp'``: 2 is FSDP2 (``fully_shard``), 1 is FSDP1 (``FullyShardedDataParallel``, ``fsdp1``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Units:
    """A model as FSDP2 wraps it: ``fully_shard`` on every decoder layer, then on the root."""

    layer: int
    """U: parameters of one decoder layer."""
    root: int
    """R: the rest (embeddings, final norm, LM or scalar head): Ψ − L·U."""
    head: int
    """H: parameters of the head whose gradient backward makes first and the root keeps to its end."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Unsharded:
    """FSDP2: bytes one role holds beyond its shards at each kind of moment (weights, all-gather outputs,
    unsharded gradients, reduce-scatter inputs). See the module docstring."""

    first_forward: int
    """Inside a layer of the model's first forward in a step, beside its activations."""
    first_copy_out: int
    """At a unit's copy-out in that forward (no activations)."""
    forward: int
    """Inside a layer of a later forward, beside its activations."""
    copy_out: int
    """At a unit's copy-out in a later forward."""
    lm_head: int
    """At the LM head, after the last layer (its all-gather output still held)."""
    after_forward: int
    """After a forward without autograd (the log-softmax over its logits)."""
    loss: int
    """Backward at the loss (the forward's root still unsharded)."""
    backward: int
    """Backward through the first layers (every checkpointed input still alive)."""
    late_backward: int
    """Backward through the last layers (the sharded gradients nearly whole)."""
    backward_end: int
    """The root's reduce-scatter, after every layer's."""
    persists: int
    """Kept while other models compute, from the model's first forward in a step to its backward (stage 2)."""
    version: int = 2
    """2: FSDP2 (this module); 1: FSDP1 (``memplan.estimator.fsdp1``)."""
    first_reduce_scatter: int = 0
    """FSDP1: the first layer's gradient reduce-scattered in backward (its bf16 and fp32 gradients, padded copy,
    new shard) beside the weights then unsharded (0: FSDP2, whose reduce-scatter input is in ``backward``)."""
    lazy_init: int = 0
    """FSDP1, mixed precision: the fp32 full-precision unsharded buffer of the largest unit, allocated and freed
    once per unit at the first forward of the run (``FlatParamHandle.init_flat_param_attributes``)."""
    last_reduce_scatter: int = 0
    """FSDP1: the same for layer 1 (layer 0 prefetched; the largest of the later ones: the sharded gradients of
    L − 2 layers are then alive, the checkpointed input of one)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class States:
    """Per-GPU bytes of one role's model states and engine buffers."""

    parameter: int = 0
    """Weights kept on the GPU between phases."""
    optstate: int = 0
    """Optimizer states and fp32 master weights kept on the GPU."""
    buffer: int = 0
    """Persistent engine buffers (ZeRO's contiguous gradient bucket, DDP buckets)."""
    gradient: int = 0
    """Gradients alive from backward to the optimizer step (freed after it: ``set_to_none``)."""
    gradient_persists: bool = False
    """The gradients are zeroed, not freed, after the step: resident in every phase from the first backward
    (DeepSpeed's ``BF16_Optimizer``)."""
    step_temp: int = 0
    """Transient of the optimizer step (foreach temporary, fp32 gradient partition)."""
    gather: int = 0
    """Weights gathered for compute (ZeRO-3 prefetch, FSDP unshard, autocast copies), alive in forwards."""
    full_gather: int = 0
    """The whole model's weights gathered at once (the hybrid engine's generation under ZeRO-3)."""
    host: int = 0
    """Host RAM for this role per GPU (CPU offload)."""
    fsdp: Unsharded | None = None
    """FSDP2 at stage 2 or 3 (``engine='fsdp'``): what it unshards, moment by moment; ``gather`` is then its
    ``forward``."""


def _div(n: float, k: int) -> int:
    return int(-(-n // k))


def gathered_elems(sh: Sharding, largest_param: int, largest_unit: int) -> int:
    """Parameters unsharded at once for compute under ZeRO-3 / FSDP full sharding.

    DeepSpeed ZeRO-3 fetches module by module and releases after use: the largest module's parameters plus
    the prefetch bucket (``stage3_prefetch_bucket_size``). FSDP2 unshards one wrapped decoder layer and
    prefetches the next: two layers (or the embedding / LM head, whichever is larger).
    """
    if sh.engine == "deepspeed":
        return largest_param + PREFETCH_BUCKET_ELEMS
    return 2 * largest_unit


def fsdp_unsharded(units: Units, params: int, e: float, sh: Sharding, *, trains: bool) -> Unsharded:
    """What FSDP2 holds unsharded on one GPU at each moment (module docstring), for a trained model at stage 2
    or 3, or a frozen model at stage 3 (``e``: its bytes per weight; backward gathers as a forward: LoRA).
    FSDP1 (``sh.fsdp_version == 1``): ``fsdp1.fsdp1_unsharded``."""
    if sh.fsdp_version == 1:
        from memplan.estimator.fsdp1 import fsdp1_unsharded  # fsdp1 imports this module's types

        return fsdp1_unsharded(units, params, e, sh, trains=trains)
    tp = sh.tp
    root, u, head, psi = units.root / tp, units.layer / tp, units.head / tp, params / tp
    r = 4 if sh.master_weights else e  # MixedPrecisionPolicy(reduce_dtype=fp32)
    if sh.zero_stage == 3 or not trains:
        fwd, copy = e * (root + 2 * u), e * (root + 2 * u + max(root, u))
        if trains:
            backward, end = e * (root + head + 3 * u) + r * u, (e + r) * root
        else:
            backward, end = fwd, 0
        return Unsharded(first_forward=int(fwd), first_copy_out=int(copy), forward=int(fwd), copy_out=int(copy),
                         lm_head=int(e * (root + u)), after_forward=0, loss=int(e * root), backward=int(backward),
                         late_backward=int(backward), backward_end=int(end), persists=0)
    layers = e * (psi - root)
    return Unsharded(
        first_forward=int(e * (psi + u)), first_copy_out=int(e * (max(psi, 2 * root) + 2 * u)),
        forward=int(e * (psi + root)), copy_out=int(e * (psi + root)), lm_head=int(e * (psi + root)),
        after_forward=int(layers), loss=int(e * psi),
        backward=int(e * (psi + head) + max(e, r) * u),  # layer L − 1's gradients, or L − 2's reduce-scatter input
        late_backward=int(e * (root + head + 3 * u) + r * u), backward_end=int((e + r) * root), persists=int(layers),
    )


def frozen_states(params: int, bytes_per_param: float, largest_param: int, largest_unit: int, e: int,
                  sh: Sharding, units: Units | None = None) -> States:
    """A model that only runs forwards: weights (possibly quantized), sharded by ZeRO-3/FSDP, or on the CPU.
    ``units``: how FSDP2 wraps it (needed for ``engine='fsdp'`` at stage 3)."""
    full = _div(params * bytes_per_param, sh.tp)
    sharded = sh.zero_stage == 3
    on_gpu = _div(full, sh.dp) if sharded else full
    gather = 0
    fsdp = None
    if sh.engine == "fsdp" and sharded and units is not None:
        fsdp = fsdp_unsharded(units, params, bytes_per_param, sh, trains=False)
        gather = fsdp.forward
        if sh.fsdp_version == 1:  # padded flat shards: ⌈F/N⌉ per unit
            from memplan.estimator.fsdp1 import shard_elems

            on_gpu = int(-(-shard_elems(units, params, sh.dp, sh.tp) * bytes_per_param // 1))
    elif sharded or sh.offload_params:
        gather = _div(gathered_elems(sh, largest_param, largest_unit) * bytes_per_param, sh.tp)
    if sh.offload_params:
        return States(host=on_gpu, gather=gather, full_gather=full, fsdp=fsdp)
    return States(parameter=on_gpu, gather=gather, full_gather=full, fsdp=fsdp)


def trainable_states(params: int, largest_param: int, largest_unit: int, e: int, sh: Sharding,
                     units: Units | None = None) -> States:
    """A trained model (or a LoRA adapter: then ``params`` are the adapter's) under its engine. ``units``: how
    FSDP2 wraps it (needed for ``engine='fsdp'`` at stage 2 and 3)."""
    n, tp = sh.dp, sh.tp
    psi = params / tp
    state_e = 4 if sh.master_weights else e
    opt = optimizer_state_bytes_per_param(sh.optimizer, state_e)
    master = 4 if sh.master_weights and e != 4 else 0
    temp_per_param = {"foreach": state_e, "fused": 0, "for-loop": 0}[sh.optimizer_impl]
    if sh.optimizer != "adamw":
        temp_per_param = 0  # bitsandbytes 8-bit Adam and SGD step in place; Adafactor's temps are factored
    loop_temp = state_e * largest_param / tp if sh.optimizer_impl == "for-loop" and sh.optimizer == "adamw" else 0

    if sh.engine == "deepspeed" and sh.zero_stage == 0 and master and not sh.offload_optimizer:
        loop = int(state_e * largest_param / tp) if sh.optimizer_impl == "for-loop" else 0
        flat_temp = int(temp_per_param * psi) + loop  # the DeepSpeed optimizers step one flat fp32 tensor
        if sh.dtype == "fp16":  # FP16_Optimizer: fp32 copies of every gradient, then their flat concatenation
            return States(parameter=int(e * psi), optstate=int((master + opt) * psi), gradient=int(e * psi),
                          step_temp=int(2 * 4 * psi) + flat_temp, full_gather=int(e * psi))
        # BF16_Optimizer: the fp32 gradient buffer is an engine buffer; the 16-bit gradients persist; one
        # parameter's fp32 copy at a time is added into the buffer
        return States(parameter=int(e * psi), optstate=int((master + opt) * psi), buffer=int(4 * psi),
                      gradient=int(e * psi), gradient_persists=True,
                      step_temp=max(int(4 * largest_param / tp), flat_temp), full_gather=int(e * psi))

    if sh.engine == "deepspeed":
        stage = sh.zero_stage
        shard_opt = n if stage >= 1 else 1
        bucket = e * min(REDUCE_BUCKET_ELEMS, int(psi)) if stage >= 1 else 0
        weights = _div(e * psi, n) if stage == 3 else int(e * psi)
        if stage >= 2:
            grads = _div(e * psi, n) + int(e * largest_param / tp)
        else:
            grads = int(e * psi)
        fp32_grads = _div(4 * min(psi / shard_opt, SUB_GROUP_ELEMS if stage == 3 else psi), 1)
        gather = int(e * gathered_elems(sh, largest_param, largest_unit) / tp) if stage == 3 else 0
        full_gather = int(e * psi)
        states = _div((master + opt) * psi, shard_opt)
        host = 0
        if sh.offload_optimizer:
            host += states + _div(4 * psi, shard_opt)  # fp32 master, m, v and fp32 gradients in pinned memory
            states, fp32_grads = 0, 0
            if stage >= 2:
                grads = int(e * largest_param / tp)
        if sh.offload_params:
            host += weights
            weights = 0
        return States(
            parameter=weights, optstate=states, buffer=bucket, gradient=grads, step_temp=fp32_grads,
            gather=gather, full_gather=full_gather, host=host,
        )

    if sh.engine == "fsdp" and sh.zero_stage >= 1:
        w = 4 if sh.master_weights else e  # sharded parameters are the master copy
        shards, k = psi, n
        if sh.fsdp_version == 1 and units is not None:  # FSDP1's padded flat shards: ⌈F/N⌉ per unit
            from memplan.estimator.fsdp1 import shard_elems

            shards, k = shard_elems(units, params, n, tp), 1
        weights = _div(w * shards, k)
        grads = _div(w * shards, k)
        states = _div(opt * shards, k)
        temp = _div(temp_per_param * shards, k) + int(loop_temp)
        fsdp = None
        if sh.zero_stage >= 2 and units is not None:
            fsdp = fsdp_unsharded(units, params, e, sh, trains=True)
            gather = fsdp.forward
        elif sh.zero_stage == 3:
            # current + prefetched layer, and one layer's unsharded gradients before reduce-scatter
            gather = int(e * (gathered_elems(sh, largest_param, largest_unit) + largest_unit) / tp)
        else:
            gather = int(e * psi) + int(e * largest_unit / tp)  # reshard_after_forward=False keeps all unsharded
        if sh.offload_optimizer or sh.offload_params:  # CPUOffloadPolicy moves parameters, gradients and states
            return States(gather=gather, full_gather=int(e * psi), host=weights + grads + states, fsdp=fsdp)
        return States(
            parameter=weights, optstate=states, gradient=grads, step_temp=temp, gather=gather,
            full_gather=int(e * psi), fsdp=fsdp,
        )

    # plain PyTorch, or DeepSpeed-less DDP: nothing is sharded
    w = 4 if sh.master_weights else e
    autocast_copies = int(e * psi) if w != e else 0  # autocast caches low-precision weight casts per forward
    return States(
        parameter=int(w * psi),
        optstate=int(opt * psi),
        buffer=2 * DDP_BUCKET_BYTES if n > 1 else 0,
        gradient=int(w * psi),
        step_temp=int(temp_per_param * psi + loop_temp),
        gather=autocast_copies,
        full_gather=int(w * psi),
    )
