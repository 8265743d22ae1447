"""FSDP1 (``torch.distributed.fsdp.FullyShardedDataParallel``) as verl's ``actor.strategy: fsdp`` runs it: what one
rank holds, moment by moment, beside FSDP2's model in ``parallel``.

verl 0.9 ``workers/fsdp_workers.py::_build_model_optimizer`` wraps every decoder layer (``_no_split_modules``,
``utils/fsdp_utils.py::get_fsdp_wrap_policy``) and the root with ``use_orig_params=False``,
``MixedPrecision(param_dtype=bf16, reduce_dtype=fp32, buffer_dtype=fp32)``, ``FULL_SHARD`` (``SHARD_GRAD_OP``
when ``reshard_after_forward`` is false), ``forward_prefetch=False`` and torch's defaults
``backward_prefetch=BACKWARD_PRE``, ``limit_all_gathers=True``. Read from torch 2.13
``distributed/fsdp/_flat_param.py`` and ``_runtime_utils.py``, checked against rank-0 traces
(``memplan.harness.sharded_fsdp1``, tests/test_fsdp1.py). Letters: a unit's F parameters (a layer's U, the
root's R: embeddings, final norm, head), N ranks, e bytes per unsharded element (bf16: 2), r per reduce
element (fp32: 4), H the head whose gradient backward makes first:

* one ``FlatParameter`` per unit, padded to N·⌈F/N⌉ elements (``FlatParamHandle._init_flat_param_and_metadata``;
  no alignment padding with ``use_orig_params=False``); each rank keeps ⌈F/N⌉ of it in the model's dtype
  (fp32 for verl's actor: the master weights), and its optimizer steps that flat shard: Adam's m and v are
  ⌈F/N⌉ each, padding included;
* unsharding a unit (``_unshard``) copies the shard to a bf16 ``_mp_shard`` (e·⌈F/N⌉, ``_use_low_precision_shard``,
  mixed precision only), all-gathers it straight into ``_full_param_padded`` (e·N·⌈F/N⌉), whose views the
  layers compute with, and frees the bf16 shard (``post_unshard``). No separate all-gather output, no
  copy-out (FSDP2 has both);
* ``FULL_SHARD``: a layer is freed after its forward (``_post_forward_reshard``); the root is not ("with the
  intention that they are immediately used for backward"): it stays unsharded from the forward's start to the
  end of backward — or, after a forward without autograd, until verl frees it (``compute_log_prob``:
  ``actor_module._handle.reshard(True)``);
* backward unshards layer k and prefetches layer k − 1 (``BACKWARD_PRE``): two layers, the root, and the
  head's gradient (waiting in the root's split view until the embedding's arrives);
* a layer's gradient: autograd accumulates the flat bf16 gradient (e·F), the post-backward hook frees the layer's
  weights, casts the gradient to fp32 (r·F, ``reduce_dtype``), pads it to N·⌈F/N⌉ when F is not a multiple of N
  (``_get_reduce_scatter_tensors``: ``F.pad``, one more r·N·⌈F/N⌉) and reduce-scatters it into a new fp32 shard
  (r·⌈F/N⌉) that is kept (``_saved_grad_shard``);
* ``SHARD_GRAD_OP``: no unit is freed after a forward — after a forward without autograd neither, so a model's
  layers stay unsharded from its first forward in a step until each one's post-backward; verl frees only the
  root after inference;
* the first forward of the run initialises every unit (``_lazy_init`` → ``init_flat_param_attributes``): with
  mixed precision it allocates, and frees at once, a full-precision unsharded buffer per unit
  (``_full_prec_full_param_padded``, 4·N·⌈F/N⌉; kept for ``summon_full_params``): a one-time moment of the
  largest unit's 4·N·⌈F/N⌉ beside the shards, before any optimizer state exists;
* ``limit_all_gathers``: at most two all-gathers in flight (``_FreeEventQueue``): it holds the GPU's stream
  to the CPU's order, in which at most the current and the prefetched layer are unsharded; what it bounds is
  reserved memory, not allocated, and the moments here are allocated bytes.
"""

from __future__ import annotations

from memplan.estimator.parallel import Sharding, Units, Unsharded


def padded(elems: int, n: int) -> int:
    """A flat parameter of ``elems`` elements padded to split evenly over ``n`` ranks: N·⌈F/N⌉."""
    return n * -(-elems // n)


def shard_elems(units: Units, params: int, n: int, tp: int = 1) -> int:
    """Elements one rank keeps of a model's flat parameters: ⌈U/N⌉ per layer and ⌈R/N⌉ for the root."""
    u, root = units.layer // tp, units.root // tp
    layers = round((params - units.root) / units.layer)
    return layers * -(-u // n) + -(-root // n)


def fsdp1_unsharded(units: Units, params: int, e: float, sh: Sharding, *, trains: bool) -> Unsharded:
    """What FSDP1 holds beyond its shards on one rank at each moment (module docstring), for a trained model at
    ``FULL_SHARD`` (stage 3) or ``SHARD_GRAD_OP`` (stage 2), or a frozen one at stage 3 (``e``: its bytes per
    weight; frozen models are built in the run's dtype, so no low-precision shard)."""
    n, tp = sh.dp, sh.tp
    u, root, head = units.layer // tp, units.root // tp, units.head // tp
    up, rp = padded(u, n), padded(root, n)
    layers = round((params - units.root) / units.layer)
    all_p = rp + layers * up
    mp = e if trains and sh.master_weights else 0  # the bf16 copy of the fp32 shard, all-gathered
    r = 4 if sh.master_weights else e  # MixedPrecision(reduce_dtype=fp32)

    def reduce_scatter(f: int, fp: int) -> float:
        """A unit's bf16 gradient, its fp32 cast, the padded copy (uneven F only) and the new fp32 shard."""
        return e * f + r * f + (r * fp if fp != f else 0) + r * fp / n

    if not trains:
        fwd = e * (rp + up)
        return Unsharded(first_forward=int(fwd), first_copy_out=int(fwd), forward=int(fwd), copy_out=int(fwd),
                         lm_head=int(e * rp), after_forward=0, loss=int(e * rp), backward=int(fwd),
                         late_backward=int(fwd), backward_end=0, persists=0, version=1)
    layer_rs, late = reduce_scatter(u, up), e * (rp + 2 * up + head + u)
    # the root's gradient: its pieces (head's, embedding's) and their concatenation beside the root's weights,
    # then its fp32 cast and reduce-scatter after the weights are freed
    end = max(e * (2 * root + rp), reduce_scatter(root, rp))
    lazy = 4 * max(rp, up) if mp else 0  # _full_prec_full_param_padded: torch.empty, then _free_storage
    if sh.zero_stage == 3:
        fwd = e * (rp + up)
        copy = max(fwd + mp * up / n, e * rp + mp * rp / n)  # a layer's unshard, or the root's
        return Unsharded(first_forward=int(fwd), first_copy_out=int(copy), forward=int(fwd), copy_out=int(copy),
                         lm_head=int(e * rp), after_forward=0, loss=int(e * rp), backward=int(late),
                         late_backward=int(late), backward_end=int(end), persists=0, version=1, lazy_init=lazy,
                         first_reduce_scatter=int(e * (rp + up + head) + layer_rs),
                         last_reduce_scatter=int(e * (rp + up + head) + layer_rs))
    kept = e * (all_p - rp)  # SHARD_GRAD_OP: every layer, from the first forward to its own backward
    return Unsharded(
        first_forward=int(e * all_p), first_copy_out=int(e * all_p + mp * up / n), forward=int(e * all_p),
        copy_out=int(e * all_p + mp * rp / n), lm_head=int(e * all_p), after_forward=int(kept), loss=int(e * all_p),
        backward=int(e * (all_p + head + u)), late_backward=int(late), backward_end=int(end), persists=int(kept),
        version=1, lazy_init=lazy, first_reduce_scatter=int(e * (all_p - up + head) + layer_rs),
        last_reduce_scatter=int(e * (rp + up + head) + layer_rs),
    )
