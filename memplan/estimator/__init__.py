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
  sources (workspace, make-experience outputs, log-prob temporaries, the fused q/k/v and up/gate copies a
  ZeRO-1/2 actor keeps beside ZeRO's buffer, inference tensor parallelism as DeepSpeed 0.9.x slices it), not from a
  GPU run; with ``--offload optimizer`` the ReMax paper's PPO is TIGHT on 8×A100-40GB (37.24 GiB of 39.49), where
  the paper reports OOM.
* FSDP2 (``engine='fsdp'``, N > 1) is modeled as torchtitan and verl wrap it — ``fully_shard`` per decoder
  layer and root, bf16 compute with fp32 reduce-scatter, one reduce-scatter in flight, the root resharded
  after no-grad forwards — and checked against rank-0 traces, not GPU runs. Other wrap policies, explicit
  forward prefetch, LoRA or tensor parallelism under FSDP2, and FSDP at stage 1 or on one GPU are
  approximations.
* MoE activations assume a perfectly balanced router (top-k experts per token).
* ``idle_offload`` (verl's ``param_offload`` / ``optimizer_offload``; OpenRLHF's ``ds.enable_sleep``; AgileRL's
  ``use_memory_efficient_params`` under engine 'torch') is read from verl 0.9's engine contexts, OpenRLHF 0.11's
  ``offload_deepspeed_states`` and AgileRL 0151c660's ``move_params_to_cpu``, not traced (the tracer keeps every
  state on the device); only the 'torch' one is measured (AgileRL's corpus).
* ``ref='lora-adapter'`` (a second frozen adapter on the actor's base), ``logprob_kernel='row-chunked'`` (AgileRL's
  compiled LM head, read from its source: the compiled chunk is taken to fuse its fp32 cast) and bitsandbytes'
  dequantization workspace are not traced: the harness refuses them (it runs no second adapter, no compiled kernel
  and no quantized weights).
* Every phase is the steady state (optimizer states exist from the second step): a rollout measured before the
  first update (AgileRL's corpus) holds no AdamW states, 8 B per trained parameter less than the estimate
  (``memplan validate`` nets them out of the estimate for such records: ``before_first_optimizer_step``).
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
* Colocated vLLM's start-up check (``algorithms.vllm_pool``, from vLLM v1's ``Worker.determine_available_memory``
  and ``check_enough_kv_cache_memory``): its KV cache is the reservation less its weights and its profile run's
  activations, counted as one layer's intermediates over ``vllm_max_num_batched_tokens`` (default 8,192; HF's
  formula); the sampler's dummy pass, non-torch memory and CUDA graphs are not counted, so the KV cache is an
  upper bound and a marginal run may still fail to start. vLLM's ``max_model_len`` is taken as prompt + answer
  (verl's setting). In rollout the engine holds its reservation less that profile run's activations (freed after
  it) plus its own prefill's, and its persistent input buffers in every phase (vllm 0.23 sources).
* What colocated vLLM holds beyond that cannot be read from sources. Sleep (level 1, ``CuMemAllocator.sleep``)
  backs up everything allocated under the 'weights' tag (``Worker.load_model``: weights, LoRA slots, rotary
  caches), drops the 'kv_cache' tag, then runs ``gc.collect()`` and ``torch.cuda.empty_cache()``, which also
  returns the sampler warm-up's and the profile run's cached blocks; what stays is the CUDA context, the input
  buffers (counted), NCCL communicators above TP 1, and the CUDA graphs — their executables and the native graph
  pool (vLLM PR #56373: "leaves graph executables and native CUDA graph pools resident"). The pool's tensors are
  small at AgileRL's settings (capture sizes up to min(2 × max_num_seqs, 512) tokens, ``_set_cudagraph_sizes``:
  8–32 tokens); the executables and the kernel images vLLM, flash-attn and torch.compile load are sized by no
  source (vLLM itself measures its graphs at capture). Measured on AgileRL's corpus (benchmarks/corpus/, vLLM
  0.23/0.26, torch 2.11, in-process engine), with NVML's driver reserve netted out and the measured contexts in the
  catalog: a sleeping engine's device floor lies a median 170–250 MiB (Qwen2.5 0.5B–7B, A100-40GB and L4) above
  memplan's CUDA context + cuBLAS workspace + vLLM's input buffers (OLMoE-1B-7B's: 760 MiB). The trainer above
  that floor is under-estimated by a median 160–430 MiB per fixture (the caching allocator's reserve, which NVML
  sees; the kernels the first update loads and compiles). A 4-bit base's residual stream is fp32
  (``_checkpointed_inputs``); the recomputed layer's own fp32 intermediates are not counted (≈ 10 KB per token of
  a micro batch on Qwen2.5-0.5B).
* ``logprob_kernel='chunked'`` (TRL 1.16's fused LM head) is read from trl's ``kernels/chunked_logprob.py`` and
  traced with a stand-in that makes the same allocations (within 1 % on tiny-llama, 0.05 % on Qwen2.5-0.5B GRPO),
  not measured; the stand-in folds its tiles in small fp32 blocks where the GPU folds them in registers.
* Packed micro batches (``packing``, ``max_tokens_per_gpu``; ``tokens``) count the prompt at prompt_len and the
  answers at gen_len_mean; a token cap is taken as the micro batch's size where verl balances ceil(total / cap)
  micro batches, whose largest can exceed the cap by less than one sequence. Ulysses (``sequence_parallel``) is
  read from verl's ``ulysses.py`` and ``monkey_patch.py`` and traced (``memplan.harness.ulysses``; within 0.9 % on
  tiny-llama and Qwen2.5-0.5B GRPO, docs/tracer-packing.md): its all-to-all buffers in backward (3·e·a·d per local
  token at one layer's backward) and the position ids' all-gather are not counted. OpenRLHF's ring attention
  (``sequence_parallel_mode='ring'``) is read from ring-flash-attention's ``llama3_flash_attn_varlen_func`` (K/V
  all-gathered ``ring_head_stride`` heads at a time); its kernel is traced (``memplan.harness.ring``), a whole step
  is not. The entropy (``entropy``, ``formulas.entropy_bytes``) is read from verl's, TRL's and OpenRLHF's sources
  and torch's backward formulas, and traced (eager, fp32-chunked, TRL's chunks); what torch.compile saves for the
  compiled one is taken as its input only (not traced).
* The error band beside every estimate (``band``: the verdict TIGHT) comes from the corpus' measured peaks —
  AgileRL's single-GPU LoRA GRPO runs with a colocated vLLM and one torchtune full fine-tune step — and is an
  extrapolation for every other configuration (more GPUs, DeepSpeed or FSDP, other algorithms and rollout
  engines) and for phases it never measured (critic_update); the report's notes say so.
"""

from __future__ import annotations

from functools import lru_cache
from operator import attrgetter
from typing import NamedTuple

from memplan.estimator.algorithms import EXPERIENCE_BYTES_PER_TOKEN, VllmPool, model_states, phases, vllm_pool
from memplan.estimator.band import judge
from memplan.estimator.ledger import Item, Resident, largest_activity, line_item, phase_report, resident
from memplan.estimator.parallel import States
from memplan.estimator.resolve import RoleSetup, Run, for_algorithm, resolve
from memplan.estimator.tokens import phase_tokens
from memplan.frameworks.presets import preset_notes
from memplan.report import ArchConfig, Breakdown, EstimateRequest, LineItem, ModelReport, PhaseReport, Report, trusted
from memplan.units import GiB

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
    lengths = phase_tokens(run)
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
                                        largest=largest, tokens=lengths.get(phase, "")))
            residents.append(group)
        else:
            reports.append(phase_report(phase, everything, activities, extra, tokens=lengths.get(phase, "")))
            residents.append(everything)

    peak_index = 0  # the first of equals
    for i, report in enumerate(reports):
        if report.total_bytes > reports[peak_index].total_bytes:
            peak_index = i
    peak = reports[peak_index]
    terms = sorted(residents[peak_index].line_items + peak.items, key=_line_bytes, reverse=True)[:TOP_TERMS]
    vllm_host = _vllm_host_bytes(run)
    host_per_node = (res.host_per_gpu + vllm_host) * run.gpus_per_node
    total = peak.total_bytes
    gpu_over = total > run.capacity_bytes
    reasons = []  # one per failed check: GPU memory (first), host RAM, vLLM's KV cache
    if gpu_over:
        reasons.append(f"GPU memory: the peak ({total / GiB:.2f} GiB per GPU, {peak.phase}) exceeds the GPU's "
                       f"{run.capacity_bytes / GiB:.2f} GiB")
    if host_per_node > run.host_ram_bytes_per_node:
        who = ("CPU offload" if not vllm_host else "vLLM asleep at level 1" if not res.host_per_gpu
               else "CPU offload and vLLM asleep at level 1")
        reasons.append(f"host RAM: {who} needs {host_per_node / GiB:.1f} GiB per node, more than the "
                       f"{run.host_ram_bytes_per_node / GiB:.1f} GiB given (host_ram_bytes_per_node)")
    notes = [*preset_notes(request), *run.notes]  # framework: which fields hold its defaults
    if run.rollout_engine == "vllm" and run.rollout_seqs:
        notes.append(("vLLM assumed in sleep mode outside rollout" if run.vllm_sleep else "vLLM awake in every "
                      "phase (no sleep mode)") + "; its CUDA graphs are not counted (enforce_eager avoids them)")
        _vllm_verdict(run, vllm_pool(run, run.roles[0]), reasons, notes)
        if vllm_host:
            notes.append(f"vLLM sleeps at level 1 (OpenRLHF's sleep(level=1)): its weights, {vllm_host / GiB:.2f} GiB "
                         "per GPU, wait in pinned host RAM (CuMemAllocator.sleep offloads the 'weights' tag), counted "
                         "in host_bytes_per_node; vllm_sleep_level 2 discards them")
    elif run.rollout_engine == "remote" and run.rollout_seqs:
        notes.append("generation runs on other GPUs (rollout_engine 'remote'): those GPUs are not in this estimate")
    fits = not reasons  # the point estimate's verdict; the error band's (band.judge) may add a TIGHT reason
    other_checks_fail = len(reasons) > gpu_over  # a reason besides GPU memory's: host RAM or vLLM
    verdict, peak_band, phase_bands = judge(request, run, reports, total, other_checks_fail, reasons, notes)
    return trusted(Report, dict(
        request=request, gpu=run.gpu_name, num_gpus=run.num_gpus, fits=fits, verdict=verdict,
        gpu_fits=not gpu_over, reasons=tuple(reasons), peak_bytes_per_gpu=total,
        peak_band_bytes=peak_band,
        capacity_bytes=run.capacity_bytes, headroom_bytes=run.capacity_bytes - total,
        peak_phase=peak.phase, fixed_bytes=residents[peak_index].fixed, resident_items=everything.line_items,
        phases=tuple(reports), phase_bands=phase_bands, models=res.models, deciding_terms=tuple(terms),
        host_bytes_per_node=host_per_node,
        host_fits=host_per_node <= run.host_ram_bytes_per_node, notes=tuple(notes),
    ))


def _vllm_host_bytes(run: Run) -> int:
    """Host RAM per GPU that colocated vLLM asleep at level 1 keeps: vLLM's ``Worker.sleep(level=1)`` calls
    ``CuMemAllocator.sleep(offload_tags=("weights",))``, which copies every allocation under the 'weights' tag into
    a pinned CPU tensor before unmapping it (vllm device_allocator/cumem.py); level 2 (``offload_tags=()``)
    discards them. Per GPU its engine's weights over its tensor-parallel GPUs, Ψ·e / vllm_tp (``VllmPool.weights``,
    the bytes it wakes for the sync); 0 when vLLM does not sleep, or sleeps at level 2."""
    if run.rollout_engine != "vllm" or not run.rollout_seqs or not run.vllm_sleep or run.vllm_sleep_level != 1:
        return 0
    return vllm_pool(run, run.roles[0]).weights


def _vllm_verdict(run: Run, pool: VllmPool, reasons: list[str], notes: list[str]) -> None:
    """vLLM's own start-up checks on the KV cache its reservation leaves (``algorithms.vllm_pool``): a reason
    when it cannot start, a note on how many of a generation call's sequences its KV cache holds."""
    def gib(n: int) -> str:
        return f"{n / GiB:.2f} GiB"

    tokens = run.prompt_len + run.gen_len
    left = (f"vLLM reserves {gib(pool.reserved)} per GPU (vllm_gpu_memory_utilization {run.vllm_utilization:g} × "
            f"{gib(run.capacity_bytes)}); its weights take {gib(pool.weights)} (vllm_tensor_parallel_size "
            f"{run.vllm_tp}) and its profile run's activations {gib(pool.activations)}")
    if pool.kv_cache <= 0:
        reasons.append(f"vLLM cannot start: {left}, leaving no KV cache (vLLM: 'No available memory for the cache "
                       "blocks'); raise vllm_gpu_memory_utilization or vllm_tensor_parallel_size")
    elif pool.sequences < 1:
        reasons.append(f"vLLM cannot start: {left}, leaving {gib(pool.kv_cache)} of KV cache, less than one "
                       f"sequence of {tokens} tokens needs ({gib(pool.per_sequence)}; vLLM: 'To serve at least one "
                       "request with the model's max seq len'); raise vllm_gpu_memory_utilization or "
                       "vllm_tensor_parallel_size")
    elif pool.sequences < pool.wanted:
        notes.append(f"vLLM's KV cache ({gib(pool.kv_cache)} per GPU) holds {pool.sequences} sequences of {tokens} "
                     f"tokens, fewer than the {pool.wanted} a generation call runs on one engine: vLLM preempts and "
                     "recomputes the rest (slower; the memory stays the same)")
    else:
        notes.append(f"vLLM's KV cache: {gib(pool.kv_cache)} per GPU, room for {pool.sequences} sequences of {tokens} "
                     f"tokens (a generation call runs {pool.wanted} per engine)")


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


__all__ = ["compare", "estimate", "for_algorithm"]
