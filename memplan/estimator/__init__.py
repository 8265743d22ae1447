"""The analytic estimator: per-GPU peak memory of an RL fine-tuning run, model by model, phase by phase.

``estimate(request)`` resolves the request (``resolve``), computes each role's model states under its
sharding (``parallel``), runs the algorithm's recipe (``algorithms``) through the ledger, and reports the
peak over phases. Pure Python: no torch, microseconds. A report is a pure function of its request and
immutable: it is computed once per distinct request (``CACHE_SIZE`` kept), its models built without
re-validation.

Known limitations:
* Allocator fragmentation (reserved − allocated) is not modeled; the CUDA tier measures it. Leave headroom.
* Dropout is assumed off (DeepSpeed-Chat's ``--disable_actor_dropout``, TRL and verl disable it for RL).
* Tensor parallelism divides weights, most activations, KV heads and logits by the TP degree; norms' and
  residual activations are counted as split too (Megatron sequence parallelism), which under-counts TP
  without it.
* CUDA graphs of vLLM and NCCL's buffers are approximations; the CUDA tier is the judge.
* DeepSpeed-Chat's hybrid engine (``dschat``) is modeled from the deepspeed 0.10.3 / transformers 4.31
  sources (workspace, make-experience outputs, log-prob temporaries), not from a GPU run; with
  ``--offload optimizer`` it still predicts that the ReMax paper's PPO fits where the paper reports OOM.
* FSDP2 (``engine='fsdp'``, N > 1) is modeled as torchtitan and verl wrap it — ``fully_shard`` per decoder
  layer and root, bf16 compute with fp32 reduce-scatter, one reduce-scatter in flight, the root resharded
  after no-grad forwards — and checked against rank-0 traces, not GPU runs. Other wrap policies, explicit
  forward prefetch, LoRA or tensor parallelism under FSDP2, and FSDP at stage 1 or on one GPU are
  approximations.
* MoE activations assume a perfectly balanced router (top-k experts per token).
* ``idle_offload`` (verl's ``param_offload`` / ``optimizer_offload``; OpenRLHF's ``ds.enable_sleep``) is read
  from verl 0.9's engine contexts and OpenRLHF 0.11's ``offload_deepspeed_states``, not traced (the tracer keeps
  every state on the device) nor measured.
* The weight sync to colocated vLLM (shards back under idle offload, vLLM's weights woken alone in sleep mode,
  one tensor gathered at a time or the whole actor, and verl 0.9's bucket the tensors are packed into:
  ``weight_sync_bucket_mb``) is read from verl 0.9, TRL 1.16 and OpenRLHF 0.11, not traced; vLLM's weights are
  counted at Ψ·e over ``vllm_tensor_parallel_size`` (at most its reservation).
* ``logprob_kernel='fused'`` (flash-attn's cross-entropy as verl calls it, Liger's) is read from the kernels'
  sources and traced with a stand-in that makes the same allocations, not measured; the LM head's backward
  (the input's gradient beside the logits' in-place one) is not counted: −2 to −3 % on tiny models.
* Split placement gives every GPU group the same share of the GPUs (OpenRLHF sizes each model's group by its own
  ``num_gpus_per_node``); a group holding several roles (``split_groups``) runs them one after another, a
  process (and a runtime) each.
* ``processes_per_gpu`` repeats the runtime (CUDA context, cuBLAS workspace, NCCL buffers) per process; a vLLM
  worker at tensor-parallel size 1 synced over CUDA IPC (OpenRLHF's colocate_all) has no NCCL communicator
  (256 MiB over), and OpenRLHF's IPC sync clones each gathered parameter (one parameter under).
* ``logprob_kernel='fp32-fused'`` (OpenRLHF 0.11's ``Actor.forward``: every position's logits cast to fp32, flash-attn's
  cross-entropy with its out-of-place backward) is read from openrlhf's and flash-attn's sources and traced with
  the same stand-in (within 0.01 % on Qwen2.5-0.5B GRPO), not measured.
* ``logprob_kernel='chunked'`` (TRL 1.16's fused LM head) is read from trl's ``kernels/chunked_logprob.py`` and
  traced with a stand-in that makes the same allocations (within 1 % on tiny-llama, 0.05 % on Qwen2.5-0.5B GRPO),
  not measured; the stand-in folds its tiles in small fp32 blocks where the GPU folds them in registers.
"""

from __future__ import annotations

from functools import lru_cache
from operator import attrgetter
from typing import NamedTuple

from memplan.estimator.algorithms import EXPERIENCE_BYTES_PER_TOKEN, model_states, phases
from memplan.estimator.ledger import Item, Resident, largest_activity, line_item, phase_report, resident
from memplan.estimator.parallel import States
from memplan.estimator.resolve import RoleSetup, resolve
from memplan.report import ArchConfig, Breakdown, EstimateRequest, LineItem, ModelReport, PhaseReport, Report, trusted

CUBLAS_WORKSPACE_BYTES = 32 * 1024**2
"""cuBLAS workspace torch keeps per stream on Hopper/Ampere (CUBLAS_WORKSPACE_CONFIG default, 4 MiB × 8)."""
NCCL_BUFFER_BYTES = 256 * 1024**2
"""NCCL_BUFFSIZE 4 MiB × up to 32 channels × send/recv, once more than one GPU communicates."""
TOP_TERMS = 6
CACHE_SIZE = 256
"""Requests whose (immutable) reports are kept, a few kB each: repeated and planner requests hit it."""
_line_bytes = attrgetter("bytes")


@lru_cache(maxsize=64)
def _fixed(cuda_context_bytes: int, multi_gpu: bool,
           processes: int = 1) -> tuple[tuple[Item, ...], tuple[LineItem, ...]]:
    """The runtime's items (CUDA context, cuBLAS workspace, NCCL buffers) and their line items: once per process
    sharing the GPU."""
    each = f" × {processes} processes" if processes > 1 else ""
    items = [
        Item("runtime", "other", processes * cuda_context_bytes, "CUDA context" + each),
        Item("runtime", "other", processes * CUBLAS_WORKSPACE_BYTES, "cuBLAS workspace" + each),
    ]
    if multi_gpu:
        items.append(Item("runtime", "other", processes * NCCL_BUFFER_BYTES, "NCCL buffers" + each))
    return tuple(items), tuple(line_item(item) for item in items)


class _RoleParts(NamedTuple):
    """What one role contributes whatever the recipe: its states, resident items and model report."""

    states: States
    items: tuple[Item, ...]
    lines: tuple[LineItem, ...]
    model: ModelReport
    host: int
    """Host RAM per GPU: CPU offload, and what idle offload keeps there between the role's own steps."""


@lru_cache(maxsize=1024)
def _role_parts(r: RoleSetup, e: int, lora_rank: int) -> _RoleParts:
    """By value (``model_states``' arguments): the same role recurs across a sweep's or a plan's requests."""
    st = model_states(r, e, lora_rank)
    sh = r.sharding
    parameter = 0 if sh.idle_params else st.parameter  # idle offload: back for the role's own steps only
    optstate = 0 if sh.idle_optimizer else st.optstate
    host = st.host + (st.parameter - parameter) + (st.optstate - optstate)
    items = []
    for category, n_bytes, note in (
        ("parameter", parameter, "weights"),
        ("optstate", optstate, "optimizer states + fp32 master" if sh.master_weights else "optimizer states"),
        ("buffer", st.buffer, "engine gradient buckets"),
    ):
        if n_bytes:
            items.append(Item(r.role, category, n_bytes, note))
    return _RoleParts(st, tuple(items), tuple(line_item(item) for item in items),
                      _model_report(r, parameter, optstate, st.buffer, host), host)


def _model_report(r: RoleSetup, parameter: int, optstate: int, buffer: int, host: int) -> ModelReport:
    resident = trusted(Breakdown, {"parameter": parameter, "buffer": buffer, "gradient": 0,
                                   "optstate": optstate, "activation": 0, "temp": 0, "kv_cache": 0, "logits": 0,
                                   "other": 0},
                       {"parameter", "optstate", "buffer"})  # the keys given when it was a validated dict
    return trusted(ModelReport, {
        "role": r.role, "name": r.spec.name, "num_params": r.num_params, "trainable_params": r.trainable_params,
        "trainable": r.trainable, "zero_stage": r.sharding.zero_stage, "gpus": r.sharding.dp * r.sharding.tp,
        "resident": resident, "host_bytes": host, "shares_weights_with": r.shares_weights_with,
    })


class _Residents(NamedTuple):
    """What the run's roles and runtime keep in every phase, whatever the batch and the recipe."""

    states: dict[str, States]
    """Each role's states (read-only by convention: shared by the requests with the same roles)."""
    everything: Resident
    groups: dict[tuple[str, ...], Resident]
    """Split placement: each GPU group's (a runtime per role, and those roles'); empty when colocated."""
    models: tuple[ModelReport, ...]
    host_per_gpu: int


@lru_cache(maxsize=1024)
def _residents(roles: tuple[RoleSetup, ...], e: int, lora_rank: int, cuda_context_bytes: int, multi_gpu: bool,
               split_groups: tuple[tuple[str, ...], ...], processes: int = 1) -> _Residents:
    """By value: the same roles recur across the batch sizes and lengths of a sweep's or a plan's requests."""
    parts = {r.role: _role_parts(r, e, lora_rank) for r in roles}
    fixed, fixed_lines = _fixed(cuda_context_bytes, multi_gpu, processes)
    everything = resident(fixed + tuple(item for part in parts.values() for item in part.items),
                          fixed_lines + tuple(li for part in parts.values() for li in part.lines))
    groups = {}
    own = {r.role for r in roles if not r.shares_weights_with}
    for group in split_groups:  # one process per role holding its own weights: each with its runtime
        group_fixed, group_lines = _fixed(cuda_context_bytes, multi_gpu, len(own.intersection(group)))
        groups[group] = resident(group_fixed + tuple(item for role in group for item in parts[role].items),
                                 group_lines + tuple(li for role in group for li in parts[role].lines))
    return _Residents({role: part.states for role, part in parts.items()}, everything, groups,
                      tuple(part.model for part in parts.values()),
                      sum(part.host for part in parts.values()))


def _compute(request: EstimateRequest) -> Report:
    run = resolve(request)
    split = run.placement == "split"  # each group of roles on its own GPUs: the busiest group sets the phase
    res = _residents(run.roles, run.e, run.lora_rank, run.cuda_context_bytes, run.num_gpus > 1, run.groups,
                     run.processes_per_gpu)
    states, everything, groups = res.states, res.everything, res.groups
    recipe = phases(run, states)
    experience = run.experience_seqs * run.train_seq_len * EXPERIENCE_BYTES_PER_TOKEN
    exp_item = [Item("actor", "buffer", experience, "experience buffer")] if experience else []

    reports: list[PhaseReport] = []
    residents: list[Resident] = []
    for phase, activities in recipe.items():
        extra = exp_item if phase != "rollout" else []
        if split:  # the group with the largest total (the first of equals); only its report is built
            extra_bytes = sum(item.bytes for item in extra)  # the actor's GPUs keep the experience
            best = None
            for roles, group in groups.items():
                own = [act for act in activities if act.role in roles]
                largest, transient = largest_activity(own)
                total = group.total + transient + (extra_bytes if "actor" in roles else 0)
                if best is None or total > best[0]:
                    best = (total, roles, group, own, largest)
            _total, roles, group, own, largest = best
            reports.append(phase_report(phase, group, own, extra if "actor" in roles else [], group="+".join(roles),
                                        largest=largest))
            residents.append(group)
        else:
            reports.append(phase_report(phase, everything, activities, extra))
            residents.append(everything)

    peak_index = 0  # the first of equals
    for i, report in enumerate(reports):
        if report.total_bytes > reports[peak_index].total_bytes:
            peak_index = i
    peak = reports[peak_index]
    terms = sorted(residents[peak_index].line_items + peak.items, key=_line_bytes, reverse=True)[:TOP_TERMS]
    host_per_node = res.host_per_gpu * run.gpus_per_node
    notes = []
    if host_per_node > run.host_ram_bytes_per_node:
        notes.append(f"CPU offload needs {host_per_node / 2**30:.0f} GiB of host RAM per node, more than the "
                     f"{run.host_ram_bytes_per_node / 2**30:.0f} GiB given (host_ram_bytes_per_node)")
    if run.rollout_engine == "vllm":
        notes.append(("vLLM assumed in sleep mode outside rollout" if run.vllm_sleep else "vLLM awake in every "
                      "phase (no sleep mode)") + "; its CUDA graphs are not counted (enforce_eager avoids them)")
    elif run.rollout_engine == "remote" and run.rollout_seqs:
        notes.append("generation runs on other GPUs (rollout_engine 'remote'): those GPUs are not in this estimate")
    total = peak.total_bytes
    return trusted(Report, dict(
        request=request, gpu=run.gpu_name, num_gpus=run.num_gpus, fits=total <= run.capacity_bytes,
        peak_bytes_per_gpu=total, capacity_bytes=run.capacity_bytes, headroom_bytes=run.capacity_bytes - total,
        peak_phase=peak.phase, fixed_bytes=residents[peak_index].fixed, resident_items=everything.line_items,
        phases=tuple(reports), models=res.models, deciding_terms=tuple(terms), host_bytes_per_node=host_per_node,
        host_fits=host_per_node <= run.host_ram_bytes_per_node, notes=tuple(notes),
    ))


@lru_cache(maxsize=CACHE_SIZE)
def _cached(key: EstimateRequest | tuple) -> Report:
    return _compute(request_of(key))


def cache_key(request: EstimateRequest) -> EstimateRequest | tuple:
    """The request, with the fields given of any inline architecture: equal ``ArchConfig``s can differ in
    which fields were set, and an unset ``tie_word_embeddings`` takes the family's default."""
    archs = [v for v in (request.model, request.critic_model, request.reward_model) if isinstance(v, ArchConfig)]
    if not archs:
        return request
    return (request, *(frozenset(a.model_fields_set) for a in archs))


def request_of(key: EstimateRequest | tuple) -> EstimateRequest:
    """The request a ``cache_key`` was made from."""
    return key if isinstance(key, EstimateRequest) else key[0]


def estimate(request: EstimateRequest | None = None, /, **kwargs) -> Report:
    """Estimate the per-GPU peak memory of one run.

    ``estimate(EstimateRequest(...))`` or ``estimate(model=..., algo=..., gpus=..., **knobs)``.
    Raises ``memplan.errors.InputError`` (naming the field) or pydantic's ``ValidationError`` on bad input.

    The report is a pure function of the request, and immutable: it is computed once per distinct request
    (``CACHE_SIZE`` most recent kept) and the same report is returned for an equal request.
    """
    if request is None:
        request = EstimateRequest(**kwargs)
    elif kwargs:
        request = request.model_copy(update=kwargs)
        request = EstimateRequest.model_validate(request.model_dump())
    return _cached(cache_key(request))


def compare(requests: list[EstimateRequest]) -> list[Report]:
    """Estimate several runs (e.g. the same model under each algorithm) for a side-by-side view."""
    return [estimate(req) for req in requests]


__all__ = ["compare", "estimate"]
