"""FSDP1 for the sharded tracer: wrap a model with ``FullyShardedDataParallel`` as verl's ``strategy: fsdp`` does,
and tell the counter what FSDP1 allocates out of the dispatcher's sight.

verl 0.9 ``workers/fsdp_workers.py::_build_model_optimizer`` wraps the actor (fp32) and the reference (bf16)
with ``FSDP(module, auto_wrap_policy=get_fsdp_wrap_policy(...), sharding_strategy=FULL_SHARD (or SHARD_GRAD_OP
when reshard_after_forward is false), mixed_precision=MixedPrecision(param_dtype=bf16, reduce_dtype=fp32,
buffer_dtype=fp32), use_orig_params=False, forward_prefetch=False)``; ``utils/fsdp_utils.py::get_fsdp_wrap_policy``
wraps every class in the model's ``_no_split_modules`` (the decoder layer): one ``FlatParameter`` per decoder
layer and one for the root (embeddings, final norm, head). After a forward without autograd verl frees the
root's unsharded flat parameter itself (``compute_log_prob``: ``self.actor.actor_module._handle.reshard(True)``),
as this harness does after every no-grad forward of the root (FSDP1 keeps the root unsharded after its
forward, expecting a backward: ``_runtime_utils._post_forward_reshard``).

FSDP1 frees and re-allocates the padded unsharded flat parameter and the low-precision shard by resizing
their storages (``torch/distributed/utils.py::_alloc_storage``/``_free_storage``, called from
``fsdp/_flat_param.py``), which no aten op reports: ``fsdp1_hooks`` tells the counter. What the counter then
sees, and the estimator models (``memplan.estimator.fsdp1``): the fp32 flat shard, the bf16 copy of it made
to be all-gathered (``_use_low_precision_shard``, freed in ``post_unshard``), the bf16 padded unsharded flat
parameter (``_full_param_padded``, the all-gather's output, whose views the layers compute with), the unsharded
gradient autograd accumulates into the flat parameter, its fp32 cast (``_post_backward_hook``: ``reduce_dtype``),
the padded copy ``_get_reduce_scatter_tensors`` makes of it when the flat parameter does not split evenly, and
the new sharded gradient.

Not traced: CPU offload (``CPUOffload(offload_params=True)``, which verl forces on its FSDP1 reference:
``pin_memory`` needs a CUDA build), LoRA, hybrid sharding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def shard_fsdp1(model: nn.Module, layer_cls: type, *, reshard_after_forward: bool, run_dtype: torch.dtype,
                device: str = "cpu") -> nn.Module:
    """``FullyShardedDataParallel`` over the default (fake) process group, one unit per ``layer_cls`` and the
    root, with verl's mixed precision; returns the wrapper (it forwards attributes to ``model``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    wrapped = FullyShardedDataParallel(
        model, auto_wrap_policy=ModuleWrapPolicy({layer_cls}), device_id=torch.device(device),
        sharding_strategy=ShardingStrategy.FULL_SHARD if reshard_after_forward else ShardingStrategy.SHARD_GRAD_OP,
        mixed_precision=MixedPrecision(param_dtype=run_dtype, reduce_dtype=torch.float32,
                                       buffer_dtype=torch.float32),
        use_orig_params=False, forward_prefetch=False, limit_all_gathers=True,
    )
    wrapped.register_forward_hook(_reshard_root_after_inference)
    for name, module in wrapped.named_modules():
        if name.split(".")[-1] == "score":  # a scalar head: see _root_backward_from
            module.register_forward_hook(_root_backward_from(wrapped))
    return wrapped


def _root_backward_from(root: nn.Module):  # noqa: ANN202
    """A forward hook for a scalar head: FSDP1 hooks the root's pre-backward onto the root's *outputs* only, and
    the harness's critic loss uses the per-token values it captures at the head (``steps.common.token_values``;
    verl's critic returns them as its output), so hook the root onto the head's output as well. Without it
    backward never enters the root's FORWARD_BACKWARD state and its post-backward hook fails."""
    from torch.distributed.fsdp._runtime_utils import _register_pre_backward_hooks

    def hook(_module: nn.Module, _args: object, out: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            _register_pre_backward_hooks(root, root, out, root._handle)

    return hook


def _reshard_root_after_inference(module: nn.Module, _args: object, _out: object) -> None:
    """verl's ``_handle.reshard(True)`` after a forward without autograd: free the root's unsharded flat param."""
    if not torch.is_grad_enabled() and module._handle is not None:
        module._handle.reshard(True)


@contextlib.contextmanager
def fsdp1_hooks(counter: object, named: type) -> Iterator[None]:
    """Tell ``counter`` (a ``ShardedLiveBytes``) about FSDP1's storage resizes and label what it allocates.

    * ``_alloc_storage``/``_free_storage`` as ``_flat_param`` calls them → ``counter.resized``;
    * what ``FlatParamHandle.pre_unshard``/``unshard`` allocate (the low-precision shard, the padded unsharded
      flat parameter), and ``init_flat_param_attributes`` at the first forward, is ``parameter``;
    * each parameter's gradient (of the views ``_use_unsharded_views`` sets, before autograd gathers them into the
      flat gradient: the head's waits there for the embedding's) is ``gradient``;
    * the unsharded gradient autograd made, and what ``_post_backward_hook`` allocates (its fp32 cast, the
      padded reduce-scatter input, the sharded gradient), are ``gradient``.

    ``named``: a class whose instances carry an op-like ``__name__`` for the counter's peak notes.
    """
    from torch.distributed.fsdp import _flat_param, _runtime_utils

    handle_cls = _flat_param.FlatParamHandle
    saved_module = {(_flat_param, "_alloc_storage"): _flat_param._alloc_storage,
                    (_flat_param, "_free_storage"): _flat_param._free_storage,
                    (_runtime_utils, "_post_backward_hook"): _runtime_utils._post_backward_hook}
    saved_methods = {name: getattr(handle_cls, name) for name in ("pre_unshard", "unshard", "_use_unsharded_views",
                                                                "init_flat_param_attributes")}
    alloc, free = _flat_param._alloc_storage, _flat_param._free_storage
    post_backward = _runtime_utils._post_backward_hook
    alloc_op, free_op = named("fsdp1_alloc_storage"), named("fsdp1_free_storage")

    def counted_alloc(tensor: torch.Tensor, size: torch.Size) -> None:
        alloc(tensor, size)
        counter.resized(tensor, alloc_op)

    def counted_free(tensor: torch.Tensor) -> None:
        free(tensor)
        counter.resized(tensor, free_op)

    def labelled(method):  # noqa: ANN001, ANN202
        def run(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            with counter.section(category="parameter"):
                return method(self, *args, **kwargs)
        return run

    use_views = saved_methods["_use_unsharded_views"]

    def views_with_gradients(self, as_params: bool) -> None:  # noqa: ANN001
        use_views(self, as_params)
        if not (torch.is_grad_enabled() and self.flat_param.requires_grad):
            return
        for name, module, _ in self.flat_param._param_infos:  # a parameter's gradient, before its flat parameter's
            view = getattr(module, name)
            if isinstance(view, torch.Tensor) and view.requires_grad:
                view.register_hook(lambda grad: counter.recategorize(grad, "gradient"))

    def counted_post_backward(state, handle, flat_param, *unused):  # noqa: ANN001, ANN002, ANN202
        counter.recategorize(handle.flat_param.grad, "gradient")  # autograd made it as an activation
        with counter.section(category="gradient"):
            return post_backward(state, handle, flat_param, *unused)

    _flat_param._alloc_storage = counted_alloc
    _flat_param._free_storage = counted_free
    _runtime_utils._post_backward_hook = counted_post_backward
    handle_cls.pre_unshard = labelled(saved_methods["pre_unshard"])
    handle_cls.unshard = labelled(saved_methods["unshard"])
    handle_cls.init_flat_param_attributes = labelled(saved_methods["init_flat_param_attributes"])
    handle_cls._use_unsharded_views = views_with_gradients
    try:
        yield
    finally:
        for (module, name), fn in saved_module.items():
            setattr(module, name, fn)
        for name, fn in saved_methods.items():
            setattr(handle_cls, name, fn)
