"""Tier 2, sharded: trace rank 0 of an N-rank FSDP2 run under fake tensors and PyTorch's fake process group.

``trace_sharded(request)`` builds the run's models as ``trace`` does (``models.build_model`` on meta, then
fake CPU tensors), wraps each with ``torch.distributed.fsdp.fully_shard`` over a fake N-rank process group
(every decoder layer, then the root), and runs the same two training steps (``steps.run_steps``) under
``FakeTensorMode`` with the ``LiveBytes`` counter. What rank 0 holds is then what FSDP2 itself allocates:
its shards, the all-gather buffers and unsharded weights of the unit being computed, the unsharded gradients
and reduce-scatter buffers of backward, the sharded gradients and Adam states. The fake process group runs
no collective, but FSDP2 allocates every collective's input and output itself, so the trace misses only what
NCCL allocates outside PyTorch (the estimator's ``fixed_bytes``) and, under CPU offload, the host-to-device
copy of one shard at a time (host and device are the same CPU here).

ZeRO stages and FSDP2 — the one place memplan writes the mapping down::

    request (engine='fsdp')   FSDP2, per decoder layer and root            rank 0 keeps, Ψ parameters, N ranks
    zero_stage 3 (ZeRO-3)     fully_shard(reshard_after_forward=None):      fp32 weights 4Ψ/N, fp32 gradients
                              each layer resharded after its forward, the   4Ψ/N, Adam m and v 8Ψ/N, plus the
                              root (embeddings, final norm, head) after     bf16 units being computed
                              backward
    zero_stage 2 (ZeRO-2)     fully_shard(reshard_after_forward=False)      the same, but a trained model's bf16
                                                                            layers stay unsharded from its first
                                                                            forward until its backward
    zero_stage 1 (ZeRO-1)     none: FSDP2 cannot shard optimizer states without sharding gradients
    offload='optimizer'       + CPUOffloadPolicy: shards, gradients and Adam states on the host
    frozen role, stage 3      fully_shard, weights in the run's dtype       2Ψ/N
    frozen role, stage 0-2    kept whole on every rank                      2Ψ

Trained models are built in fp32 with ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: the fp32
shards *are* the master weights, the optimizer steps them directly (``steps.optim``'s ``plain`` layout: the
Trainer makes masters only for 16-bit weights), and bf16 copies exist only unsharded. How DeepSpeed differs:

* DeepSpeed keeps 16-bit weights (2Ψ; 2Ψ/N at stage 3) *and* separate fp32 master partitions (4Ψ/N); FSDP2
  one fp32 shard (4Ψ/N) and bf16 copies on the fly. At ZeRO-2 DeepSpeed holds 2Ψ of bf16 weights for good;
  FSDP2 from a model's forward to its backward.
* Gradients: DeepSpeed reduces 16-bit gradients through a ``reduce_bucket_size`` bucket (5e8 elements) and
  casts its partition to fp32 at the step; FSDP2 casts each unit's bf16 gradients into an fp32 reduce-scatter
  input as large as the unit (``reduce_dtype``), keeps one in flight, and accumulates fp32 shards.
* Gathering: ZeRO-3 fetches module by module with a ``stage3_prefetch_bucket_size`` prefetch; FSDP2 unshards
  one ``fully_shard`` unit at a time, keeps the previous unit's all-gather buffer until the next copy-out,
  prefetches one layer in backward, and keeps the root unsharded from forward to the end of backward.

Choices of this harness: after a forward without autograd the root is resharded too (verl's
``_reshard_if_needed`` calls ``reshard()`` after inference; FSDP2 alone would keep it until a backward that
never comes for a frozen model). Generation runs the harness's prefill + decode loop through the sharded actor
(``steps.common.rollout``): each decode step unshards every layer in turn, as HF ``generate`` does under FSDP2
without an inference engine. Not traced: LoRA, tensor parallelism, hybrid sharding, split placement.

``fsdp_version=1`` wraps the sharded roles with FSDP1 instead (``FullyShardedDataParallel``, one padded
``FlatParameter`` per decoder layer and the root, as verl's ``strategy: fsdp``; ``memplan.harness.sharded_fsdp1``):
stage 3 is ``FULL_SHARD``, 2 ``SHARD_GRAD_OP``; CPU offload is not traced there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator

import torch
from torch import nn

from memplan.errors import EnvironmentProblem, InputError
from memplan.harness.counter import LiveBytes
from memplan.harness.fake import CountingProbe, quiet, report, unpacked_sequences
from memplan.harness.models import Models, build_model, materialize_fake
from memplan.harness.records import TraceReport
from memplan.harness.setup import Setup, resolve
from memplan.harness.sharded_fsdp1 import fsdp1_hooks, shard_fsdp1
from memplan.harness.steps import run_steps
from memplan.report import EstimateRequest

DECODE_STEPS = 2
"""Decode steps traced for real at each end of the answer (as ``fake.trace_request``)."""
MAX_WORLD_SIZE = 4096
_SETUP_NOTES_DONE_HERE = ("ZeRO stages are not applied", "parameter offload is not applied")


# -------------------------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RoleLayout:
    """How one role is laid out on the N ranks."""

    trains: bool
    sharded: bool
    """Wrapped with ``fully_shard`` (trained roles always; frozen roles at stage 3)."""
    reshard_after_forward: bool
    """ZeRO-3-like (True: FSDP2's default, every layer resharded after its forward, the root after backward)
    or ZeRO-2-like (False: nothing resharded before backward); frozen sharded roles always True."""
    offload: bool
    """``CPUOffloadPolicy``: sharded parameters (and gradients, optimizer states) on the host."""
    dtype: torch.dtype
    """The dtype the model is built in: fp32 for trained roles with master weights (FSDP2 keeps the masters)."""
    mixed_precision: bool
    """``MixedPrecisionPolicy(param_dtype=<run dtype>, reduce_dtype=fp32)``."""
    fsdp_version: int = 2
    """2: ``fully_shard`` (FSDP2); 1: ``FullyShardedDataParallel`` (FSDP1, ``sharded_fsdp1``)."""


def world_size_of(request: EstimateRequest, world_size: int | None) -> int:
    """The ranks to trace: ``world_size``, or every GPU of ``request.gpus`` ("8xH100-80GB" → 8)."""
    if world_size is None:
        from memplan.catalog import parse_cluster

        return parse_cluster(request.gpus).num_gpus
    if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= MAX_WORLD_SIZE:
        raise InputError("world_size", f"must be an integer from 1 to {MAX_WORLD_SIZE}", world_size)
    return world_size


def layouts(request: EstimateRequest, setup: Setup) -> dict[str, RoleLayout]:
    """Each resident role's FSDP2 layout; unsupported combinations raise ``InputError`` naming the field."""
    from memplan.harness.models import TORCH_DTYPES

    if request.engine != "fsdp":
        raise InputError("engine", "sharded traces run PyTorch FSDP2 (fully_shard): set engine 'fsdp'. DeepSpeed "
                         "ZeRO keeps bf16 weights plus separate fp32 masters and a 5e8-element gradient bucket, "
                         "which FSDP2 does not (see memplan.harness.sharded)", request.engine)
    if request.lora_rank:
        raise InputError("lora_rank", "sharded traces do not run LoRA yet: use 0, or trace() at world size 1",
                         request.lora_rank)
    if request.tp > 1:
        raise InputError("tp", "sharded traces run data parallelism only: use tp 1", request.tp)
    if request.hybrid_shard:
        raise InputError("hybrid_shard", "sharded traces shard over every rank (FULL_SHARD): use false", True)
    if request.placement != "colocated":
        raise InputError("placement", "sharded traces put every role on every rank: use 'colocated'",
                         request.placement)
    version = request.fsdp_version
    if version == 1 and (request.offload != "none" or request.offload_ref or request.offload_reward):
        field = "offload" if request.offload != "none" else "offload_ref" if request.offload_ref else "offload_reward"
        raise InputError(field, "FSDP1 traces run without CPU offload (CPUOffload pins host memory, which needs "
                         "CUDA): use none/false, or fsdp_version 2", getattr(request, field))
    run_dtype = TORCH_DTYPES[setup.dtype]
    stage_fields = {"actor": "actor_zero_stage", "critic": "critic_zero_stage", "reference": "ref_zero_stage",
                    "reward": "reward_zero_stage"}
    present = {"actor": True, "critic": setup.critic_config is not None,
               "reference": setup.ref_mode == "separate", "reward": setup.reward_config is not None}
    out: dict[str, RoleLayout] = {}
    for role, field in stage_fields.items():
        if not present[role]:
            continue
        own = getattr(request, field)
        stage, name = (own, field) if own is not None else (request.zero_stage, "zero_stage")
        trains = role in ("actor", "critic")
        if trains:
            if stage not in (2, 3):
                raise InputError(name, f"the {role} trains sharded with FSDP2 at stage 3 (fully_shard) or 2 "
                                 "(reshard_after_forward=False); ZeRO-1 has no FSDP2 equivalent, and stage 0 "
                                 "is a world-size-1 trace (memplan.harness.trace)", stage)
            master = setup.master_weights and setup.dtype != "fp32"
            out[role] = RoleLayout(trains=True, sharded=True, reshard_after_forward=stage == 3,
                                   offload=request.offload != "none", dtype=torch.float32 if master else run_dtype,
                                   mixed_precision=master, fsdp_version=version)
        else:
            offload = request.offload_ref if role == "reference" else request.offload_reward
            if offload and stage != 3:
                raise InputError("offload_ref" if role == "reference" else "offload_reward",
                                 f"CPU offload of a frozen model shards it (fully_shard): set {name} 3", True)
            out[role] = RoleLayout(trains=False, sharded=stage == 3, reshard_after_forward=True, offload=offload,
                                   dtype=run_dtype, mixed_precision=False, fsdp_version=version)
    return out


# -------------------------------------------------------------------------------------------- process group


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[object]:
    """A fake ``world_size``-rank process group with this process as rank 0; yields a 1-D CPU device mesh.

    The group is destroyed on exit, so the process is left as it was found.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise EnvironmentProblem("a torch.distributed process group is already initialised in this process; "
                                 "sharded traces make their own fake one")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------------- counting


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own tensor of a ``DTensor`` (its storage is what the rank allocates)."""
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t


class ShardedLiveBytes(LiveBytes):
    """``LiveBytes`` for FSDP2: counts a ``DTensor`` by its local shard, follows storage resizes, moves
    offloaded tensors to the host.

    FSDP2 frees an unsharded parameter by resizing its storage to 0 bytes and re-allocates it by resizing
    it back (``_fsdp_param.free_storage``/``alloc_storage``), which no aten op reports: ``resized`` is told
    by the patch in ``fsdp_hooks``.
    """

    def _add(self, t: torch.Tensor) -> int | None:
        return super()._add(_local(t))

    def track(self, tensor: torch.Tensor, role: str, category: str) -> None:
        super().track(_local(tensor), role, category)

    def relabel(self, tensor: torch.Tensor | None, role: str, category: str) -> None:
        super().relabel(None if tensor is None else _local(tensor), role, category)

    def resized(self, tensor: torch.Tensor, op: str) -> None:
        """``tensor``'s storage changed size in place: count its new size."""
        from memplan.harness.counter import block_bytes

        serial = self._serial_of.get(tensor.untyped_storage()._cdata)
        if serial is None:
            self._add(tensor)
            self._note_peak(op)
            return
        if serial in self.host:
            return
        self._flush()
        new = block_bytes(tensor.untyped_storage().nbytes())
        old = self.live.get(serial, 0)
        self.live[serial] = new
        self.current += new - old
        if new > old:
            self.labels[serial] = (self.role, self.category)  # re-allocated: what it is now
            self._note_peak(op)

    def recategorize(self, tensor: torch.Tensor | None, category: str) -> None:
        """Give ``tensor``'s storage the category ``category``, keeping its role."""
        if tensor is None:
            return
        serial = self._serial_of.get(_local(tensor).untyped_storage()._cdata)
        if serial is not None:
            self.labels[serial] = (self.labels[serial][0], category)

    def to_host(self, tensor: torch.Tensor | None) -> None:
        """``tensor`` lives in host memory (CPU offload): stop counting it as GPU memory."""
        if tensor is None:
            return
        tensor = _local(tensor)
        serial = self._serial_of.get(tensor.untyped_storage()._cdata)
        if serial is None:
            with self.section(host=True):
                super()._add(tensor)
            return
        if serial in self.host:
            return
        self._flush()
        self.host.add(serial)
        self.current -= self.live.pop(serial, 0)


class _Named:
    """An op-like name for ``LiveBytes._note_peak`` (it reads ``__name__``)."""

    def __init__(self, name: str) -> None:
        self.__name__ = name


@contextlib.contextmanager
def fsdp_hooks(counter: ShardedLiveBytes) -> Iterator[None]:
    """Tell ``counter`` what FSDP2 does out of sight of the dispatcher, and label what it allocates.

    * ``free_storage``/``alloc_storage`` (storage resizes of unsharded parameters) → ``counter.resized``;
    * what ``unshard``/``wait_for_unshard`` allocate (all-gather buffers, unsharded weights) is ``parameter``;
      the unsharded gradients autograd made, and what ``post_backward`` allocates (fp32 reduce-scatter
      buffers, sharded gradients), are ``gradient``.
    """
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    saved = {
        (_fsdp_param, "alloc_storage"): _fsdp_param.alloc_storage,
        (_fsdp_param, "free_storage"): _fsdp_param.free_storage,
        (_fsdp_param_group, "alloc_storage"): _fsdp_param_group.alloc_storage,
    }
    cls = _fsdp_param_group.FSDPParamGroup
    methods = {name: getattr(cls, name) for name in ("unshard", "wait_for_unshard", "post_backward")}
    alloc, free = _fsdp_param.alloc_storage, _fsdp_param.free_storage
    alloc_op, free_op = _Named("fsdp_alloc_storage"), _Named("fsdp_free_storage")

    def counted_alloc(tensor: torch.Tensor) -> None:
        alloc(tensor)
        counter.resized(tensor, alloc_op)

    def counted_free(tensor: torch.Tensor) -> None:
        free(tensor)
        counter.resized(tensor, free_op)

    def labelled(method, category: str):  # noqa: ANN001, ANN202
        def run(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            with counter.section(category=category):
                return method(self, *args, **kwargs)
        return run

    def post_backward(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        for fsdp_param in self.fsdp_params:  # autograd made them as activations: they are gradients
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            counter.recategorize(None if unsharded is None else unsharded.grad, "gradient")
            counter.recategorize(fsdp_param.unsharded_accumulated_grad, "gradient")
        with counter.section(category="gradient"):
            return methods["post_backward"](self, *args, **kwargs)

    _fsdp_param.alloc_storage = counted_alloc
    _fsdp_param.free_storage = counted_free
    _fsdp_param_group.alloc_storage = counted_alloc
    cls.unshard = labelled(methods["unshard"], "parameter")
    cls.wait_for_unshard = labelled(methods["wait_for_unshard"], "parameter")
    cls.post_backward = post_backward
    try:
        yield
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)
        for name, fn in methods.items():
            setattr(cls, name, fn)


# -------------------------------------------------------------------------------------------- models


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: the ``ModuleList`` with one entry per hidden layer."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise LookupError(f"no ModuleList of {n} decoder layers in {type(model).__name__}")


def shard(model: nn.Module, layout: RoleLayout, mesh: object, run_dtype: torch.dtype, *,
          pin_memory: bool = False) -> None:
    """``fully_shard`` every decoder layer, then the root (embeddings, final norm, head), as torchtitan does."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs = dict(
        # None: FSDP2's default, True for every layer but False for the root, which backward needs next
        mesh=mesh, reshard_after_forward=None if layout.reshard_after_forward else False,
        mp_policy=(MixedPrecisionPolicy(param_dtype=run_dtype, reduce_dtype=torch.float32)
                   if layout.mixed_precision else MixedPrecisionPolicy()),
        offload_policy=CPUOffloadPolicy(pin_memory=pin_memory) if layout.offload else OffloadPolicy(),
    )
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    model.register_forward_hook(_reshard_after_inference)


def _reshard_after_inference(module: nn.Module, _args: object, _out: object) -> None:
    """After a forward without autograd, reshard the root unit too (verl's ``_reshard_if_needed``)."""
    if not torch.is_grad_enabled():
        module.reshard()


def build_sharded_models(setup: Setup, layout: dict[str, RoleLayout], mesh: object, fake_mode: object = None,
                         device: str = "cpu") -> Models:
    """Every resident model of ``setup``, built on meta and wrapped with ``fully_shard`` (per ``layout``).

    With ``fake_mode`` the weights become fake CPU tensors before sharding (a trace); otherwise the sharded
    model is allocated on ``device`` (``to_empty``: each rank allocates its shards only) and its weights
    filled with small random numbers (a measurement: values do not change what is allocated).
    """
    from memplan.harness.models import TORCH_DTYPES

    run_dtype = TORCH_DTYPES[setup.dtype]
    name_of = {v: k for k, v in TORCH_DTYPES.items()}

    def make(role: str, raw: dict, scalar_head: bool) -> nn.Module:
        lay = layout[role]
        model = build_model(raw, dataclasses.replace(setup, dtype=name_of[lay.dtype]), scalar_head=scalar_head,
                            device="meta")
        model.requires_grad_(lay.trains)
        if lay.trains and setup.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5; older: gradient_…
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if fake_mode is not None:
            materialize_fake(model, fake_mode)
            if lay.sharded and lay.fsdp_version == 1:
                with fake_mode:
                    model = shard_fsdp1(model, type(decoder_layers(model)[0]), run_dtype=run_dtype,
                                        reshard_after_forward=lay.reshard_after_forward)
                return model.eval()
            if lay.sharded:
                with fake_mode:
                    shard(model, lay, mesh, run_dtype)
            return model.eval()
        if lay.sharded and lay.fsdp_version == 1:
            raise InputError("fsdp_version", "measured sharded runs use FSDP2 (fully_shard on meta, to_empty); "
                             "FSDP1 is traced only: use 2", 1)
        if lay.sharded:
            shard(model, lay, mesh, run_dtype, pin_memory=True)
        model.to_empty(device=device)
        with torch.no_grad():
            for p in model.parameters():
                _local(p).normal_(0.0, 0.02)
        return model.eval()

    models = Models(actor=make("actor", setup.actor_config, False))
    if setup.critic_config is not None:
        models.critic = make("critic", setup.critic_config, True)
    if "reference" in layout:
        models.reference = make("reference", setup.actor_config, False)
    if setup.reward_config is not None:
        models.reward = make("reward", setup.reward_config, True)
    return models


# -------------------------------------------------------------------------------------------- trace


class _OffloadProbe(CountingProbe):
    """A counting probe that keeps offloaded roles' sharded states on the host (``CPUOffloadPolicy``)."""

    def __init__(self, counter: ShardedLiveBytes, offloaded: dict[str, nn.Module]) -> None:
        super().__init__(counter)
        self.offloaded = offloaded

    def track(self, tensor: torch.Tensor, role: str, category: str) -> None:
        super().track(tensor, role, category)
        if role in self.offloaded and category == "parameter":
            self.counter.to_host(tensor)

    def relabel(self, tensor: torch.Tensor | None, role: str, category: str) -> None:
        super().relabel(tensor, role, category)
        if role in self.offloaded and category in ("gradient", "optstate"):
            self.counter.to_host(tensor)  # FSDP2 copies the sharded gradient to the host; Adam runs there


def _offloaded_step(trainer, counter: ShardedLiveBytes) -> None:  # noqa: ANN001
    """Run ``trainer``'s optimizer step on the host (CPUOffloadPolicy: ``optimizer.step`` runs on the CPU)."""
    inner = trainer.step

    def step() -> None:
        with counter.section(host=True):
            inner()

    trainer.step = step


def run_counted_sharded(setup: Setup, layout: dict[str, RoleLayout], world_size: int, *, steps: int = 2,
                        decode_steps: int | None = DECODE_STEPS, seed: int = 0) -> ShardedLiveBytes:
    """Run ``steps`` training steps of rank 0 of ``world_size`` under the counter; returns the counter."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memplan.harness.steps.optim import Trainer

    torch.manual_seed(seed)
    counter = ShardedLiveBytes()
    fake_mode = FakeTensorMode()
    # the sharded fp32 parameters are the masters: the trainer steps them directly ('plain' layout)
    plain = dataclasses.replace(setup, master_weights=False, offload_optimizer=False)
    with quiet(), unpacked_sequences(), fake_process_group(world_size) as mesh:
        models = build_sharded_models(setup, layout, mesh, fake_mode)
        offloaded = {role: m for role, m in models.roles() if layout[role].offload}
        probe = _OffloadProbe(counter, offloaded) if offloaded else CountingProbe(counter)
        init = Trainer.__init__

        def trainer_init(self, role, model, setup_, probe_, host_device=None):  # noqa: ANN001, ANN202
            init(self, role, model, setup_, probe_, host_device)
            if role in offloaded:
                _offloaded_step(self, counter)

        if offloaded:  # run_steps makes the trainers: wrap their steps as they are made
            Trainer.__init__ = trainer_init
        try:
            fsdp1 = any(lay.sharded and lay.fsdp_version == 1 for lay in layout.values())
            fsdp1_labels = fsdp1_hooks(counter, _Named) if fsdp1 else contextlib.nullcontext()
            with fake_mode, counter, fsdp_hooks(counter), fsdp1_labels:
                run_steps(plain, models, probe, device="cpu", steps=steps, decode_steps=decode_steps)
        finally:
            Trainer.__init__ = init
    return counter


def describe(layout: RoleLayout) -> str:
    """How a role was run, in words (for the report's notes)."""
    if not layout.sharded:
        text = "whole on every rank"
    elif layout.fsdp_version == 1:
        text = "FSDP1 " + ("FULL_SHARD (ZeRO-3-like)" if layout.reshard_after_forward else
                           "SHARD_GRAD_OP (ZeRO-2-like)")
    elif layout.trains and not layout.reshard_after_forward:
        text = "fully_shard(reshard_after_forward=False) (ZeRO-2-like)"
    else:
        text = "fully_shard (ZeRO-3-like)"
    return text + (" + CPUOffloadPolicy" if layout.offload else "")


def trace_sharded(request: EstimateRequest | None = None, world_size: int | None = None, *,
                  decode_steps: int | None = DECODE_STEPS, **kwargs: object) -> TraceReport:
    """Trace rank 0 of ``request`` (or ``EstimateRequest(**kwargs)``) run on ``world_size`` ranks with FSDP2.

    ``world_size`` defaults to the request's GPU count. ``engine='fsdp'``; ``zero_stage`` (or the per-role
    stages) 3 → ``fully_shard`` with FSDP2's default resharding, 2 → ``reshard_after_forward=False`` (see the
    module docstring). Returns the ``TraceReport`` of rank 0 with ``world_size`` set.
    """
    if request is None:
        request = EstimateRequest(**kwargs)
    elif kwargs:
        request = EstimateRequest(**{**request.model_dump(exclude_unset=True), **kwargs})
    start = time.perf_counter()
    n = world_size_of(request, world_size)
    setup = resolve(request)
    layout = layouts(request, setup)
    counter = run_counted_sharded(setup, layout, n, decode_steps=decode_steps)
    base = report(request, setup, counter, time.perf_counter() - start)
    notes = [note for note in base.notes if not note.startswith(_SETUP_NOTES_DONE_HERE)]
    stages = ", ".join(f"{role} {describe(lay)}" for role, lay in layout.items())
    version = "FSDP1" if request.fsdp_version == 1 else "FSDP2"
    notes.insert(0, f"rank 0 of {n} traced with {version} over a fake process group: {stages}")
    if world_size is not None and n != world_size_of(request, None):
        notes.insert(1, f"world size {n} given; the request's gpus ({request.gpus}) were not used for it")
    return base.model_copy(update={"world_size": n, "notes": notes})
