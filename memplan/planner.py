"""The planner: what to change so a run fits, how far the batch goes, how many GPUs it needs, which algorithm
needs least. Every answer is a search over ``memplan.estimate`` (pure Python, ~0.1–0.5 ms a call).

``plan`` searches the knobs the user allows (``KNOBS``), one dimension each, options ordered from the
cheapest to run to the most memory-saving:

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
                                                                  'fsdp' and tp 1 (verl's FSDP workers)

When the request does not fit the GPU, each dimension runs from the user's value toward the saving end
(changes that save memory); when it fits, from the cheap end up to the user's value (relaxations that still
fit); when it exceeds the host's RAM (``host_ram_bytes_per_node``), over every option, since undoing an
offload saves host RAM and costs GPU memory. "Fits" always means GPU memory and host RAM, and the verdict
FITS (``Report.verdict``: the peak's error band within capacity); a TIGHT configuration counts only with
``allow_tight`` (every search takes it), and then only where its point estimate fits (``Report.fits``): the planner
never proposes a run its own estimate puts over capacity. One helper, ``_ok``, decides for every search.
Best first, cheapest subtree first; at each node the remaining dimensions take their last option (micro
batch 1): if that does not fit, the subtree is pruned. A configuration at least as far along every
dimension as a feasible one that keeps the given micro batch (a superset of its changes; a changed placement
counts as one more change) is skipped unevaluated, so the answer is the set of minimal changes (up to
``MAX_CANDIDATES``), ranked by the objective (``objective_key``: ``memplan.step_time``'s time per prompt, the GPU
count or the GPU-hours; LoRA for full fine-tuning last), ``candidate_cost`` breaking ties; one that fits only at a smaller micro batch prunes nothing (its supersets may keep more).
Evaluations are memoized and capped (``MAX_EVALUATIONS``). The bound assumes memory never rises along a
dimension; where it can (ZeRO stages on one GPU add buckets and gathers but shard nothing), a marginal
configuration may be missed.

``max_micro_batch_size``, ``max_rollout_batch_size``, ``max_score_micro_batch_size`` and ``min_gpus`` answer
one number each (doubling, then bisection); ``batch_limit`` and ``gpu_limit`` wrap them in a ``LimitReport``
that carries the estimate at the answer and one step past it (one more sequence; the next smaller GPU count),
which does not fit.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import time
from collections.abc import Callable
from math import ceil, inf
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from memplan.errors import InputError
from memplan.estimator import estimate
from memplan.estimator.resolve import resolve
from memplan.report import MAX_BATCH, MAX_TOKENS, EstimateRequest, Report, Verdict, on_cluster
from memplan.comparison import timed
from memplan.units import GiB

Knob = Literal["zero_stage", "offload", "offload_ref", "offload_reward", "gradient_checkpointing", "lora",
               "micro_batch_size", "tp", "placement", "vllm_gpu_memory_utilization", "score_micro_batch_size",
               "idle_offload", "logprob_kernel", "vllm_sleep_mode", "sequence_parallel", "max_tokens_per_gpu"]
KNOBS: tuple[str, ...] = get_args(Knob)
"""Names ``plan(allow=...)`` accepts; ``zero_stage`` covers every role's stage."""
COST_ORDER = ("method_change", "cpu_offloads", "recompute", "tp", "sequence_parallel", "zero_stage_total",
              "split_placement",
              "vllm_fraction", "vllm_sleep", "lora_rank", "micro_batch", "token_cap", "score_micro_batch",
              "kernel_change",
              "changes")
"""The terms of ``candidate_cost``, compared left to right: the tie-breaker of the objective's order."""
Objective = Literal["fastest", "fewest-gpus", "cheapest"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
"""How ``plan`` ranks the configurations that fit (``objective_key``)."""
MAX_CANDIDATES = 200
"""Minimal configurations the search collects before ranking them by the objective and keeping ``max_results``."""
LORA_RANKS = (64, 16, 8)
VLLM_FRACTIONS = (0.9, 0.7, 0.5, 0.4, 0.3, 0.2)
MAX_EVALUATIONS = 800
"""~0.1–0.5 s of estimates; a plan that reaches it says ``exhaustive=False``."""
MAX_GPUS = 4096
GENERATES = ("ppo", "grpo", "remax", "rloo")
ZERO_FIELDS = {"actor": "actor_zero_stage", "critic": "critic_zero_stage", "reference": "ref_zero_stage",
               "reward": "reward_zero_stage"}
DIM_KNOB = {"actor": "actor_zero_stage", "critic": "critic_zero_stage", "reference": "ref_zero_stage/offload_ref",
            "reward": "reward_zero_stage/offload_reward"}
"""How ``PlanReport.knobs`` names a role's dimension."""
OFFLOAD_LEVEL = {"none": 0, "optimizer": 1, "optimizer+params": 2}
IDLE_LEVEL = {"none": 0, "params": 1, "optimizer": 1, "params+optimizer": 2}
IDLE = "idle:"
"""Prefix of the offload dimension's options that are an ``idle_offload`` (FSDP), not a CPU offload."""
TRAINED = ("actor", "critic")
MIN_STAGE = {"none": 0, "optimizer": 1, "optimizer+params": 3}
"""Lowest ZeRO/FSDP stage of a trained role under each CPU offload (ZeRO-Offload shards what it offloads)."""



class PlanCandidate(BaseModel):
    """One evaluated configuration: what changed, its peak, its cost."""

    model_config = ConfigDict(frozen=True)

    changes: dict[str, tuple[Any, Any]] = Field(description="field → (given value, new value)")
    request: EstimateRequest
    fits: bool = Field(description="GPU memory, host RAM and vLLM's KV cache all fit (the report's point-estimate "
                       "verdict, Report.fits)")
    verdict: Verdict = Field(description="The report's verdict with memplan's error band: fits, tight, does_not_fit")
    reasons: list[str] = Field(default_factory=list, description="Why it does not fit (the report's reasons)")
    host_fits: bool
    peak_bytes_per_gpu: int
    headroom_bytes: int
    peak_phase: str
    host_bytes_per_node: int
    cost: dict[str, int] = Field(description="candidate_cost terms in comparison order; lower is better (the "
                                 "tie-breaker of the objective)")
    num_gpus: int
    seconds_per_step: float | None = Field(None, description="Estimated seconds per step (memplan.step_time); None "
                                           "when the time model cannot run it")
    prompts_per_step: int | None = Field(None, description="Prompts (DPO/SFT: samples) one step consumes")
    wall_seconds: float | None = Field(None, description="Steps through the data set × seconds per step (plan's "
                                       "dataset_samples given)")
    gpu_hours: float | None = Field(None, description="wall_seconds × GPUs / 3600")
    price: float | None = Field(None, description="gpu_hours × price_per_gpu_hour (both given)")

    def cost_key(self) -> tuple[int, ...]:
        return tuple(self.cost.values())

    def seconds_per_prompt(self) -> float:
        """Seconds per prompt (DPO/SFT: sample), or the wall time of the data set when given; inf without a time
        estimate. A smaller micro batch takes shorter steps but more of them: the step alone does not rank."""
        if self.wall_seconds is not None:
            return self.wall_seconds
        if not self.seconds_per_step or not self.prompts_per_step:
            return inf
        return self.seconds_per_step / self.prompts_per_step


def objective_key(candidate: PlanCandidate, objective: str) -> tuple:
    """The order of ``plan``'s candidates, lower first, ``candidate_cost`` breaking ties. LoRA instead of the
    asked-for full fine-tuning (``method_change``) ranks last whatever its time: it changes what is trained, not
    only how fast. Then, by the objective:

    * fastest — seconds per prompt (the data set's wall time when ``dataset_samples`` is given);
    * fewest-gpus — GPUs, then fastest (``plan`` runs the knob search at the fewest GPUs where something fits,
      ``_plan_fewest_gpus``, so its candidates share one count and rank fastest first);
    * cheapest — GPU-seconds per prompt (the data set's GPU-hours; × a price per GPU-hour, the same order).
    """
    t = candidate.seconds_per_prompt()
    if objective == "fastest":
        head: tuple = (t,)
    elif objective == "fewest-gpus":
        head = (candidate.num_gpus, t)
    else:
        head = (t * candidate.num_gpus,)
    return (candidate.cost["method_change"], *head, *candidate.cost_key())


class PlanReport(BaseModel):
    """Configurations that fit, best first by the objective; when none does, the closest one."""

    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    as_given: PlanCandidate
    mode: Literal["fix", "relax"] = Field(
        description="'fix': the request does not fit (GPU or host), candidates are the changes that make it "
        "fit; 'relax': it fits, candidates are cheaper settings that still fit")
    fits_any: bool = Field(description="Some candidate is FITS (or TIGHT, its point estimate fitting, under "
                           "allow_tight)")
    allow_tight: bool = Field(False, description="TIGHT configurations whose point estimate fits were accepted")
    candidates: list[PlanCandidate] = Field(description="Best first by the objective (ties: cost_order); when "
                                            "nothing fits, the smallest peak")
    objective: Objective = Field("fastest", description="How the candidates are ranked (objective_key)")
    dataset_samples: int | None = Field(None, description="Prompts (samples) in the data set, for wall times")
    price_per_gpu_hour: float | None = Field(None, description="Price of one GPU-hour, for the candidates' price")
    knobs: list[str] = Field(description="Knobs that had more than one option")
    cost_order: list[str] = Field(default=list(COST_ORDER), description="The tie-breaker, compared left to right")
    evaluations: int
    exhaustive: bool = Field(description="False when MAX_EVALUATIONS stopped the search before it reached "
                             "max_results configurations in cost order")
    ranked_all: bool = Field(True, description="Every minimal configuration (up to MAX_CANDIDATES) was reached and "
                             "ranked by the objective; False when MAX_EVALUATIONS stopped the search first")
    elapsed_ms: float
    notes: list[str] = Field(default_factory=list)


def _ok(report: Report | PlanCandidate | None, allow_tight: bool = False) -> bool:
    """The planner's one test of a configuration: the verdict is FITS, or, with ``allow_tight``, TIGHT with the
    point estimate fitting (GPU memory, host RAM and vLLM's KV cache: ``Report.fits``). A FITS verdict implies
    ``fits``; a DOES NOT FIT one implies not."""
    return report is not None and (report.verdict == "fits" or allow_tight and report.fits)


def _try(request: EstimateRequest) -> Report | None:
    try:
        return estimate(request)
    except InputError:
        return None


def _changes(given: EstimateRequest, new: EstimateRequest) -> dict[str, tuple[Any, Any]]:
    old = given.__dict__  # the fields' values, in declaration order (a hot loop: no getattr per field)
    return {name: (old[name], value) for name, value in new.__dict__.items() if old[name] != value}


def candidate_cost(given: EstimateRequest, req: EstimateRequest, roles: list[str]) -> dict[str, int]:
    """Throughput proxy of ``req`` (resident ``roles``), compared left to right, lower first: the order of the
    search, and the tie-breaker of ``objective_key`` (which replaced it as the ranking):

    1. method_change — 1 if LoRA replaces the full fine-tuning the user asked for (ranks last);
    2. cpu_offloads — trained-role offload (optimizer 1, optimizer+params 2) + idle offload (params 1,
       optimizer 1) + offload_ref + offload_reward;
    3. recompute — 1 with gradient checkpointing;
    4. tp — tensor-parallel degree;
    4b. sequence_parallel — Ulysses' degree (two all-to-alls around every attention);
    5. zero_stage_total — sum of the resident roles' ZeRO stages (more sharding, more communication);
    6. split_placement — 1 when each role has its own GPUs;
    7. vllm_fraction — minus vLLM's memory fraction in percent (a smaller KV cache generates slower);
    7b. vllm_sleep — 1 with colocated vLLM in sleep mode (its weights to the CPU and back and its KV cache
       rebuilt every step: seconds, against minutes of generation and training; ranked after a smaller vLLM
       fraction, which slows every generation);
    8. lora_rank — minus the LoRA rank (a larger adapter is closer to what was asked);
    9. micro_batch — minus the micro-batch size (larger first);
    9b. token_cap — minus the token cap of a training micro batch, when one is set (larger first);
    10. score_micro_batch — minus the scoring micro batch, when one is given (larger first);
    11. kernel_change — 1 if a fused log-prob kernel replaces the given log-softmax (no throughput cost, but
        a dependency to install: after every knob that costs throughput, before the count of changes);
    12. changes — number of request fields that differ from the user's.
    """
    stage = {r: getattr(req, ZERO_FIELDS[r]) for r in roles}
    offloads = (OFFLOAD_LEVEL[req.offload] + IDLE_LEVEL[req.idle_offload]
                + int(req.offload_ref and "reference" in roles) + int(req.offload_reward and "reward" in roles))
    return {
        "method_change": int(req.lora_rank > 0 and given.lora_rank == 0),
        "cpu_offloads": offloads,
        "recompute": int(req.gradient_checkpointing),
        "tp": req.tp,
        "sequence_parallel": req.sequence_parallel,
        "zero_stage_total": sum(s if s is not None else req.zero_stage for s in stage.values()),
        "split_placement": int(req.placement == "split"),
        "vllm_fraction": -round(req.vllm_gpu_memory_utilization * 100) if req.rollout_engine == "vllm" else 0,
        "vllm_sleep": int(req.rollout_engine == "vllm" and req.vllm_sleep_mode),
        "lora_rank": -req.lora_rank,
        "micro_batch": -req.micro_batch_size,
        "token_cap": -(req.max_tokens_per_gpu or 0),
        "score_micro_batch": -(req.score_micro_batch_size or 0),
        "kernel_change": int(req.logprob_kernel != given.logprob_kernel),
        "changes": len(_changes(given, req)),
    }


def _candidate(given: EstimateRequest, report: Report, dataset_samples: int | None = None,
               price_per_gpu_hour: float | None = None) -> PlanCandidate:
    req = report.request
    roles = [m.role for m in report.models if not m.shares_weights_with]
    t = timed(req, dataset_samples)
    gpu_hours = None if t is None or t.wall_seconds is None else t.wall_seconds * report.num_gpus / 3600
    return PlanCandidate(
        changes=_changes(given, req), request=req, fits=report.fits, verdict=report.verdict,
        reasons=list(report.reasons),
        host_fits=report.host_fits,
        peak_bytes_per_gpu=report.peak_bytes_per_gpu, headroom_bytes=report.headroom_bytes,
        peak_phase=report.peak_phase, host_bytes_per_node=report.host_bytes_per_node,
        cost=candidate_cost(given, req, roles), num_gpus=report.num_gpus,
        seconds_per_step=None if t is None else t.seconds_per_step,
        prompts_per_step=None if t is None else t.prompts_per_step,
        wall_seconds=None if t is None else t.wall_seconds, gpu_hours=gpu_hours,
        price=None if gpu_hours is None or price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour,
    )


def _zero_fields(given: EstimateRequest, stages: dict[str, int]) -> dict[str, int | None]:
    """Request fields that give each role its stage, with as few fields changed as possible."""
    best: dict[str, int | None] = {}
    best_diff = None
    for base in dict.fromkeys([given.zero_stage, *stages.values()]):
        fields: dict[str, int | None] = {"zero_stage": base}
        for role, stage in stages.items():
            old = getattr(given, ZERO_FIELDS[role])
            fields[ZERO_FIELDS[role]] = old if old == stage else None if stage == base else stage
        diff = sum(value != getattr(given, name) for name, value in fields.items())
        if best_diff is None or diff < best_diff:
            best, best_diff = fields, diff
    return best


def _cluster(request: EstimateRequest) -> tuple[int, int, str]:
    """(GPUs, GPUs per node, catalog GPU name)."""
    from memplan.catalog import parse_cluster

    cluster = parse_cluster(request.gpus)
    return cluster.num_gpus, cluster.gpus_per_node, cluster.gpu.name


@dataclass(frozen=True, slots=True)
class _Dim:
    name: str
    options: tuple[Any, ...]
    """Cheapest first; the last is the most memory-saving (placement: unordered)."""
    host_least: int = -1
    """The option that keeps the least on the host (-1: the last)."""


def _dimensions(given: EstimateRequest, base: Report, allow: set[str], side: str) -> list[_Dim]:
    """One dimension per knob: the saving side of the given value ('fix') or its cheap side ('relax'). When
    the host's RAM is exceeded ('both'), the saving side from the given value with its offload undone
    (``undo``): undoing an offload saves host RAM.

    A frozen role's dimension pairs its stage with its parameter offload: (0, off) → (3, off) → (3, on).
    """
    roles = [m.role for m in base.models if not m.shares_weights_with]
    shards = given.engine != "torch"  # plain PyTorch neither shards nor offloads

    def dim(name: str, options, current: Any, key=None, host_least: Any = None, undo: Any = None) -> _Dim:
        full = sorted({*options, current}, key=key)
        i = full.index(current)
        if side == "both" and undo in full:
            i = min(i, full.index(undo))
        kept = tuple(full[i:] if side != "relax" else full[: i + 1])
        return _Dim(name, kept, kept.index(host_least) if host_least in kept else -1)

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
        _Dim("placement", placements),
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


def _token_dims(given: EstimateRequest, allow: set[str], dim, per_node: int, n: int) -> list[_Dim]:  # noqa: ANN001
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


def _vllm_dim(given: EstimateRequest, allow: set[str], dim, side: str) -> _Dim:  # noqa: ANN001
    """vLLM's memory fraction, only the fractions at which vLLM starts (its KV cache holds a sequence of the run:
    ``algorithms.vllm_pool``; no other knob of the plan changes that). When the given fraction is too small for
    vLLM to start, every fraction that starts is an option, the smallest last."""
    fractions = VLLM_FRACTIONS if "vllm_gpu_memory_utilization" in allow else ()
    starts = [u for u in fractions if _vllm_starts(given, u)]
    if _vllm_starts(given, given.vllm_gpu_memory_utilization) or not starts:
        return dim("vllm_gpu_memory_utilization", starts, given.vllm_gpu_memory_utilization, key=lambda u: -u)
    return _Dim("vllm_gpu_memory_utilization", tuple(sorted(starts, reverse=True)))


def _vllm_starts(given: EstimateRequest, fraction: float) -> bool:
    from memplan.estimator.algorithms import vllm_pool

    try:
        run = resolve(given.model_copy(update={"vllm_gpu_memory_utilization": fraction}))
    except InputError:
        return False
    return vllm_pool(run, run.roles[0]).sequences >= 1


def _offload_dim(given: EstimateRequest, allow: set[str], dim, side: str, shards: bool) -> _Dim:  # noqa: ANN001
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


class _Exhausted(Exception):
    pass


def plan(request: EstimateRequest, *, allow: set[str] | None = None, max_results: int = 20,
         allow_tight: bool = False, objective: str = "fastest", dataset_samples: int | None = None,
         price_per_gpu_hour: float | None = None) -> PlanReport:
    """Configurations that fit (GPU memory and host RAM), reached by changing only the ``allow``-ed knobs
    (default: all of ``KNOBS``), best first by ``objective`` (``objective_key``: the estimated time per prompt
    of ``memplan.step_time``, the GPU count, or the GPU-hours), ``candidate_cost`` breaking ties: LoRA instead
    of the asked-for full fine-tuning ranks last; then fewer CPU offloads, no recomputation, lower TP, lower ZeRO
    stages, colocated roles, a larger vLLM fraction, a larger LoRA rank, a larger micro batch, fewer changed
    fields. ``dataset_samples`` adds each candidate's wall time (and ranks by it: the steps are whole);
    ``price_per_gpu_hour`` its price.

    The search collects up to ``MAX_CANDIDATES`` minimal configurations in ``candidate_cost`` order, then ranks
    them by the objective: a configuration that changes more than a fitting one (a superset of its changes) is
    not proposed even where the time model finds it faster.

    If the request does not fit, the candidates are its minimal memory-saving changes ('fix'; past the host's
    RAM, undoing offloads too); if it fits, the cheapest relaxations that still fit ('relax'; the request
    itself is ``as_given``). When nothing fits, ``fits_any`` is False and ``candidates`` holds the
    configuration with the smallest peak found. A TIGHT configuration fits only with ``allow_tight`` (``_ok``).
    Raises ``InputError`` for an unknown knob or an invalid request.
    """
    start = time.perf_counter()
    allow = set(KNOBS) if allow is None else set(allow)
    if unknown := sorted(allow - set(KNOBS)):
        raise InputError("allow", f"unknown knobs {unknown}; allowed: {', '.join(KNOBS)}", unknown)
    if max_results < 1:
        raise InputError("max_results", "must be at least 1", max_results)
    if objective not in OBJECTIVES:
        raise InputError("objective", f"must be one of {', '.join(OBJECTIVES)}", objective)
    if dataset_samples is not None and dataset_samples < 1:
        raise InputError("dataset_samples", "must be at least 1", dataset_samples)
    if price_per_gpu_hour is not None and not 0 < price_per_gpu_hour < inf:
        raise InputError("price_per_gpu_hour", "must be a positive number", price_per_gpu_hour)
    if objective == "fewest-gpus":  # the GPU count searched around the knob search
        return _plan_fewest_gpus(request, start, allow=allow, max_results=max_results, allow_tight=allow_tight,
                                 dataset_samples=dataset_samples, price_per_gpu_hour=price_per_gpu_hour)
    base = estimate(request)
    fix = not _ok(base, allow_tight)
    side = "both" if not base.host_fits else "fix" if fix else "relax"
    dims = _dimensions(request, base, allow, side)
    roles = [d.name for d in dims if d.name in ZERO_FIELDS]
    n = len(dims)
    last = [len(d.options) - 1 for d in dims]
    max_mb = request.micro_batch_size if fix and "micro_batch_size" in allow else 0
    memo: dict[EstimateRequest, Report | None] = {}
    found: dict[tuple[int, ...], int] = {}  # feasible leaf → 1 + the index of its last changed dimension
    closest = [base]

    built: dict[tuple, tuple[EstimateRequest, list[str]]] = {}
    zero_fields: dict[tuple, dict[str, int | None]] = {}

    def build(levels, mb: int = 1) -> tuple[EstimateRequest, list[str]]:
        key = (*levels, mb)
        if key not in built:
            built[key] = _build(levels, mb)
        return built[key]

    def _build(levels, mb: int) -> tuple[EstimateRequest, list[str]]:
        values = {d.name: d.options[i] for d, i in zip(dims, levels)}
        update = {k: v for k, v in values.items() if k not in ZERO_FIELDS}
        stages = {r: values[r] if r in TRAINED else values[r][0] for r in roles}
        for role, field in (("reference", "offload_ref"), ("reward", "offload_reward")):
            if role in values:
                update[field] = values[role][1]
        if values["lora_rank"] != request.lora_rank:  # LoRA: the reference is the actor with its adapter off
            update["ref"] = "lora-shared" if request.ref == "separate" else request.ref
            update["offload_ref"] = request.offload_ref
            stages.pop("reference", None)
        key = tuple(stages.items())
        if key not in zero_fields:
            zero_fields[key] = _zero_fields(request, stages)
        update.update(zero_fields[key])
        offload = update["offload"]
        update["offload"], update["idle_offload"] = (("none", offload[len(IDLE):]) if offload.startswith(IDLE)
                                                     else (offload, "none"))
        update["micro_batch_size"] = mb if max_mb else request.micro_batch_size
        if request.split_groups and update["placement"] == "colocated":  # every role on every GPU: no groups
            update["split_groups"] = ()
        elif request.split_groups and update.get("ref") == "lora-shared":  # the actor's own: on its GPUs already
            without = (tuple(role for role in group if role != "reference") for group in request.split_groups)
            update["split_groups"] = tuple(group for group in without if group)
        return request.model_copy(update=update), list(stages)

    def evaluate(levels, mb: int = 1) -> Report | None:
        req = build(levels, mb)[0]
        if req not in memo:
            if len(memo) >= MAX_EVALUATIONS:
                raise _Exhausted
            memo[req] = report = _try(req)
            if report is not None and report.peak_bytes_per_gpu < closest[0].peak_bytes_per_gpu:
                closest[0] = report
        return memo[req]

    costs: dict[tuple, tuple[int, ...]] = {}

    def lower_cost(prefix: list[int]) -> tuple[int, ...]:  # no completion of the prefix costs less
        levels = (*prefix, *[0] * (n - len(prefix)))
        if levels not in costs:
            req, resident = build(levels, max_mb or 1)
            costs[levels] = tuple(candidate_cost(request, req, resident).values())
        return costs[levels]

    def dominated(prefix: list[int]) -> bool:  # a superset of the changes of a configuration that fits
        k = len(prefix)
        return any(end <= k and all(map(operator.le, f[:end], prefix)) for f, end in found.items())

    tp_at, offload_at = (next(i for i, d in enumerate(dims) if d.name == name) for name in ("tp", "offload"))

    def complete(prefix: list[int], rest: list[int]) -> Report | None:
        """The prefix completed by ``rest``; if invalid, with a smaller TP if TP is not fixed yet (split)."""
        levels = prefix + rest
        report = evaluate(levels)
        while report is None and tp_at >= len(prefix) and levels[tp_at] > 0:
            levels[tp_at] -= 1
            report = evaluate(levels)
        return report

    def may_fit(prefix: list[int]) -> bool:
        """Some completion may fit: the most saving one fits the GPU, the least offloaded one the host."""
        k = len(prefix)
        saving = complete(prefix, last[k:])
        if saving is None or not saving.gpu_fits or saving.host_fits:
            return saving is not None and saving.gpu_fits
        least = complete(prefix, [dims[i].host_least % len(dims[i].options) for i in range(k, n)])
        return least is None or least.host_fits

    def largest_fitting(levels: list[int]) -> Report:
        """The leaf at the largest micro batch (at most the given one) that fits; it fits at 1."""
        best = evaluate(levels)
        lo, hi = 1, max_mb + 1
        while hi - lo > 1:
            mid = max_mb if hi == max_mb + 1 else (lo + hi) // 2  # the given batch first
            report = evaluate(levels, mid)
            lo, hi, best = (mid, hi, report) if _ok(report, allow_tight) else (lo, mid, best)
        return best

    # best first: pop the subtree whose cheapest completion costs least; a popped leaf that fits is pushed
    # back with its real cost (its micro batch) and emitted when popped again, so candidates come in order
    heap: list = [(lower_cost([p]), i, [p], None) for i, p in enumerate(range(len(dims[0].options)))]
    heapq.heapify(heap)
    tie = itertools.count(len(heap))
    emitted: dict[EstimateRequest, PlanCandidate] = {}

    def emit(leaf: Report) -> None:
        resident = [m for m in leaf.models if not m.shares_weights_with]
        if leaf.request.placement == "colocated" or len(resident) > 1:  # split of a single model is no change
            emitted.setdefault(leaf.request, leaf)

    exhaustive = True  # the first max_results minimal configurations in cost order (or all) were reached
    ranked_all = True  # every minimal configuration was reached and ranked
    try:
        while heap and len(emitted) < MAX_CANDIDATES:
            _, _, prefix, leaf = heapq.heappop(heap)
            if leaf is not None:
                emit(leaf)
            elif dominated(prefix) or not may_fit(prefix):
                continue
            elif len(prefix) < n:
                d = dims[len(prefix)]
                low = MIN_STAGE.get(dims[offload_at].options[prefix[offload_at]], 0) if d.name in TRAINED else 0
                for i in (i for i, option in enumerate(d.options) if d.name not in TRAINED or option >= low):
                    heapq.heappush(heap, (lower_cost(prefix + [i]), next(tie), prefix + [i], None))
            elif _ok(evaluate(prefix), allow_tight):
                report = largest_fitting(prefix)
                if report.request.micro_batch_size >= max_mb:  # else a superset may keep a larger micro batch
                    found[tuple(prefix)] = max((i + 1 for i, level in enumerate(prefix) if level), default=0)
                resident = [m.role for m in report.models if not m.shares_weights_with]
                cost = tuple(candidate_cost(request, report.request, resident).values())
                heapq.heappush(heap, (cost, next(tie), prefix, report))
    except _Exhausted:
        exhaustive = len(emitted) >= max_results
        ranked_all = False
        for *_, leaf in sorted(entry for entry in heap if entry[3] is not None):
            if len(emitted) < MAX_CANDIDATES:
                emit(leaf)

    def candidate(report: Report) -> PlanCandidate:
        return _candidate(request, report, dataset_samples, price_per_gpu_hour)

    # by the objective (stable, cost as the tie-breaker: the search's order breaks the rest), field-wise
    # supersets dropped, the first max_results kept
    ranked = sorted((candidate(leaf) for leaf in emitted.values()), key=lambda c: objective_key(c, objective))
    candidates = _minimal(ranked)[:max_results]
    notes = [] if exhaustive else [f"search stopped after {MAX_EVALUATIONS} estimates; better ones may exist"]
    if exhaustive and not ranked_all:
        notes.append(f"ranked the {len(emitted)} configurations reached (in cost order) within {MAX_EVALUATIONS} "
                     f"estimates; a {'faster' if objective != 'cheapest' else 'cheaper'} one may lie beyond")
    if candidates and all(c.seconds_per_step is None for c in candidates):
        notes.append(f"no time estimate for {base.gpu} (memplan/catalog/gpu_perf.json): ranked by cost_order")
    if not base.host_fits:
        notes.append(f"as given, host RAM per node ({base.host_bytes_per_node / GiB:.1f} GiB) exceeds "
                     f"host_ram_bytes_per_node ({request.host_ram_bytes_per_node / GiB:.1f} GiB): offloads "
                     "may be undone")
    if (request.rollout_engine == "vllm" and request.algo in GENERATES
            and not any(_vllm_starts(request, u) for u in (*VLLM_FRACTIONS, request.vllm_gpu_memory_utilization))):
        notes.append(f"vLLM cannot start at any vllm_gpu_memory_utilization with vllm_tensor_parallel_size "
                     f"{request.vllm_tensor_parallel_size}: its weights and one sequence's KV cache need more of a GPU; "
                     "raise vllm_tensor_parallel_size (not a knob of the plan)")
    if not candidates:
        candidates = [candidate(closest[0])]
        notes.append("nothing fits with the allowed knobs; the candidate is the smallest peak found")
    knobs = [DIM_KNOB.get(d.name, d.name) for d in dims if len(d.options) > 1] + (
        ["micro_batch_size"] if max_mb > 1 else [])
    return PlanReport(
        request=request, as_given=candidate(base), mode="fix" if fix else "relax",
        fits_any=any(_ok(c, allow_tight) for c in candidates), allow_tight=allow_tight, candidates=candidates,
        objective=objective, dataset_samples=dataset_samples, price_per_gpu_hour=price_per_gpu_hour,
        knobs=knobs, evaluations=len(memo),
        exhaustive=exhaustive, ranked_all=ranked_all, elapsed_ms=round((time.perf_counter() - start) * 1e3, 3), notes=notes,
    )


def _plan_fewest_gpus(request: EstimateRequest, start: float, **search: Any) -> PlanReport:
    """``plan(objective="fewest-gpus")``: the knob search (ranked fastest first) at the fewest GPUs of the
    request's kind, at most the request's count, at which an allowed configuration fits. The counts are
    ``_gpu_counts``' below the request's, then the request's own: 1, 2, 4, 8 in turn, then doubling and bisection
    (as ``min_gpus``: more GPUs never need more memory per GPU). Each candidate's changes start with ``gpus``
    when the count is smaller. When nothing fits even at the request's count, that count's plan (its closest)."""
    clusters = [c for c in _gpu_counts(request) if _num_gpus(c) < _num_gpus(request.gpus)] + [request.gpus]
    reports: dict[int, PlanReport] = {}

    def fits(i: int) -> bool:
        if i not in reports:
            try:
                reports[i] = plan(request.model_copy(update={"gpus": clusters[i]}), objective="fastest", **search)
            except InputError:  # e.g. a tensor-parallel degree above the smaller count
                return False
        return reports[i].fits_any

    last = len(clusters) - 1
    small = [i for i in range(last) if _num_gpus(clusters[i]) <= 8]
    chosen = next((i for i in small if fits(i)), None)
    if chosen is None:
        lo, hi = (small[-1] if small else -1), last  # lo does not fit; hi is the request's count
        if fits(hi):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if fits(mid) else (mid, hi)
        chosen = hi
    found = reports[chosen] if chosen in reports else plan(request, objective="fastest", **search)
    moved = clusters[chosen] != request.gpus
    candidates = [c.model_copy(update={"changes": {"gpus": (request.gpus, clusters[chosen]), **c.changes}})
                  if moved else c for c in found.candidates]
    tried = ", ".join(str(_num_gpus(clusters[i])) for i in sorted(reports))
    note = (f"fewest-gpus: the knob search ran at {tried} GPU(s); {_num_gpus(clusters[chosen])} is the fewest at "
            "which an allowed configuration fits" if found.fits_any else
            "fewest-gpus: nothing fits even at the request's GPU count")
    as_given = _candidate(request, estimate(request), search.get("dataset_samples"), search.get("price_per_gpu_hour"))
    return found.model_copy(update={
        "request": request, "as_given": as_given, "candidates": candidates, "objective": "fewest-gpus",
        "evaluations": sum(r.evaluations for r in reports.values()), "notes": [*found.notes, note],
        "elapsed_ms": round((time.perf_counter() - start) * 1e3, 3)})


def _minimal(candidates: list[PlanCandidate]) -> list[PlanCandidate]:
    """Drop a candidate whose changed fields (with their values) include all of another's and more: two role
    stages can read as one ``zero_stage`` change plus an override, so the search's dimension-wise minimality
    does not always show field by field."""
    diffs = [set(c.changes.items()) for c in candidates]
    return [c for c, d in zip(candidates, diffs) if not any(other < d for other in diffs)]


def _largest(request: EstimateRequest, field: str, limit: int = MAX_BATCH, allow_tight: bool = False) -> int | None:
    """Largest value of ``field`` up to ``limit`` that fits (``_ok``): doubling from 1, then bisection. None if 1
    does not fit."""

    def fits(value: int) -> bool:
        return _ok(_try(request.model_copy(update={field: value})), allow_tight)

    if not fits(1):
        return None
    lo, hi = 1, 0  # fits at lo, not at hi (0: not found yet)
    while not hi:
        step = min(2 * lo, limit)
        if step == lo:
            return lo
        lo, hi = (step, 0) if fits(step) else (lo, step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_micro_batch_size(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The largest ``micro_batch_size`` that fits (GPU and host; TIGHT only with ``allow_tight``), or None if 1
    does not.

    The rollout batch follows the micro batch unless ``rollout_batch_size`` is set.
    """
    return _largest(request, "micro_batch_size", allow_tight=allow_tight)


def max_rollout_batch_size(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The largest ``rollout_batch_size`` (prompts per GPU per generation) that fits, the micro batch as given."""
    if request.algo not in GENERATES:
        raise InputError("algo", f"{request.algo!r} generates no rollouts; use max_micro_batch_size", request.algo)
    return _largest(request, "rollout_batch_size", allow_tight=allow_tight)


def scored_sequences(request: EstimateRequest) -> int:
    """The sequences one GPU scores per step, the most a scoring micro batch holds: rollout prompts × group
    size (DPO: the micro batch's pairs), as ``resolve`` counts them. ``InputError`` where nothing is scored in
    micro batches."""
    if request.algo == "sft":
        raise InputError("algo", "SFT has no scoring phase", request.algo)
    run = resolve(request.model_copy(update={"score_micro_batch_size": None}))
    if run.algo == "dpo":
        return run.train_seqs // 2  # chosen + rejected of each pair
    if run.rollout_engine == "hybrid-engine" and run.placement == "colocated":
        raise InputError("rollout_engine", "DeepSpeed-Chat's hybrid engine scores each generation batch whole: "
                         "use max_rollout_batch_size", request.rollout_engine)
    return run.rollout_seqs


def max_score_micro_batch_size(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The largest ``score_micro_batch_size`` that fits, at most ``scored_sequences``, the other batches as
    given (verl's ``log_prob_micro_batch_size_per_gpu``); None if 1 does not fit."""
    return _largest(request, "score_micro_batch_size", scored_sequences(request), allow_tight)


def _gpu_counts(request: EstimateRequest) -> list[str]:
    """The clusters ``min_gpus`` tries, smallest first, as ``gpus`` strings: 1, 2, 4, 8, then multiples of 8.

    Up to one node the cluster is ``'N x GPU'``; beyond, whole nodes. A node holds the request's GPUs per
    node when it names several nodes, else max(its GPUs, the GPU's ``gpus_per_node``) (a one-GPU request still
    means full nodes: 8 for SXM boards).
    """
    from memplan.catalog import parse_cluster

    cluster = parse_cluster(request.gpus)
    node = cluster.gpus_per_node if cluster.num_nodes > 1 else max(cluster.gpus_per_node, cluster.gpu.gpus_per_node)
    name = cluster.gpu.name
    counts = [n for n in (1, 2, 4, 8, *range(16, MAX_GPUS + 1, 8)) if n <= node or n % node == 0]
    return [f"{n}x{name}" if n <= node else f"{n // node}x{node}x{name}" for n in counts]


def _num_gpus(gpus: str) -> int:
    from memplan.catalog import parse_cluster

    return parse_cluster(gpus).num_gpus


def min_gpus(request: EstimateRequest, *, allow_tight: bool = False) -> int | None:
    """The smallest number of the request's GPU that fits (GPU and host), or None up to 4096.

    Tries the clusters of ``_gpu_counts``: 1, 2, 4, 8 in turn, then doubling and bisection over the multiples
    of 8 (memory per GPU falls as GPUs are added). The answer fits and the count before it does not.
    """
    clusters = _gpu_counts(request)
    i = _fewest(request, clusters, allow_tight)
    return None if i is None else _num_gpus(clusters[i])


def _fewest(request: EstimateRequest, clusters: list[str], allow_tight: bool = False,
            within: Callable[[EstimateRequest], bool] | None = None) -> int | None:
    """Index of the first cluster that fits (``_ok``) — and, given ``within``, passes it too (a time budget:
    ``_within_budget``) — searched as ``min_gpus`` says."""

    def fits(i: int) -> bool:
        req = on_cluster(request, clusters[i])  # an unset zero_stage follows the GPU count
        return _ok(_try(req), allow_tight) and (within is None or within(req))

    small = [i for i, c in enumerate(clusters) if _num_gpus(c) <= 8]
    first = next((i for i in small if fits(i)), None)
    if first is not None:
        return first
    lo, hi, step = small[-1], 0, 1  # fits at hi, not at lo
    while not hi:
        if lo == len(clusters) - 1:
            return None
        nxt = min(lo + step, len(clusters) - 1)
        lo, hi, step = (lo, nxt, step) if fits(nxt) else (nxt, 0, 2 * step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


class LimitReport(BaseModel):
    """One limit (``--max-batch``, ``--max-rollout-batch``, ``--min-gpus``), the estimate at it, and the
    estimate one step past it, which does not fit."""

    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    search: Literal["max_micro_batch_size", "max_rollout_batch_size", "max_score_micro_batch_size", "min_gpus",
                    "max_max_tokens_per_gpu", "max_score_max_tokens_per_gpu"]
    max_micro_batch_size: int | None = Field(None, description="Largest micro batch per GPU that fits")
    max_rollout_batch_size: int | None = Field(None, description="Largest rollout batch per GPU that fits")
    max_score_micro_batch_size: int | None = Field(
        None, description="Largest scoring micro batch per GPU that fits, at most the sequences a GPU scores")
    max_max_tokens_per_gpu: int | None = Field(
        None, description="Largest token cap of a training micro batch per GPU that fits: the answer to the largest "
        "micro batch when the run sizes its micro batches by tokens (max_tokens_per_gpu given), at most the tokens "
        "a GPU trains in a step")
    max_score_max_tokens_per_gpu: int | None = Field(
        None, description="Largest token cap of a scoring forward per GPU that fits (score_max_tokens_per_gpu, or "
        "max_tokens_per_gpu, given), at most the tokens a GPU scores in a step")
    min_gpus: int | None = Field(None, description="Fewest GPUs of the request's kind that fit (and, with "
                                 "time_budget_seconds, finish the data set within it)")
    time_budget_seconds: float | None = Field(None, description="min_gpus: the wall-time budget for the data set "
                                              "(memplan.step_time's estimate), if given")
    found: bool = Field(description="False: even the smallest batch (or the largest cluster) does not fit")
    allow_tight: bool = Field(False, description="TIGHT configurations whose point estimate fits were accepted")
    at_limit: PlanCandidate | None = Field(None, description="The request at the limit (fits)")
    past_limit: PlanCandidate | None = Field(
        None, description="One step past the limit: one more sequence, or the next smaller GPU count (does not "
        "fit); None where there is no such step (the scoring micro batch at every sequence a GPU scores)")
    elapsed_ms: float


def _limit_candidate(given: EstimateRequest, field: str, value: Any) -> PlanCandidate | None:
    report = _try(given.model_copy(update={field: value}))
    return None if report is None else _candidate(given, report)


BATCH_FIELDS = ("micro_batch_size", "rollout_batch_size", "score_micro_batch_size")
TOKEN_FIELDS = {"micro_batch_size": "max_tokens_per_gpu", "score_micro_batch_size": "score_max_tokens_per_gpu"}
"""The unit a framework sizes a micro batch in: tokens per GPU where the run gives a token cap (verl's use_dynamic_bsz,
OpenRLHF's dynamic batches), which ``batch_limit`` then searches instead of sequences."""


def _token_field(request: EstimateRequest, field: str) -> str | None:
    """The token cap ``batch_limit`` searches for ``field`` when the request sizes that micro batch by tokens."""
    cap = TOKEN_FIELDS.get(field)
    if cap is None or request.max_tokens_per_gpu is None and (
            cap == "max_tokens_per_gpu" or request.score_max_tokens_per_gpu is None):
        return None
    return cap


def _step_tokens(request: EstimateRequest) -> int:
    """Tokens one GPU trains or scores in a step (rollout sequences at their mean length, over the sequence-parallel
    group's GPUs): a larger cap changes nothing (``tokens.micro_batch``)."""
    run = resolve(request)
    if not run.rollout_seqs:
        return MAX_TOKENS * 64  # the fields' bound
    mean = run.prompt_len + (request.gen_len_mean or run.gen_len)
    return min(max(run.rollout_seqs * mean, -(-run.train_seq_len // run.sp)), MAX_TOKENS * 64)


def batch_limit(request: EstimateRequest, field: str = "micro_batch_size", *,
                allow_tight: bool = False) -> LimitReport:
    """``max_micro_batch_size`` (or ``max_rollout_batch_size``, ``max_score_micro_batch_size``) with the
    estimates at it and at one more."""
    start = time.perf_counter()
    if field not in BATCH_FIELDS:
        raise InputError("field", f"must be one of {', '.join(BATCH_FIELDS)}", field)
    if field == "rollout_batch_size" and request.algo not in GENERATES:  # before the options it then refuses
        raise InputError("algo", f"{request.algo!r} generates no rollouts; use max_micro_batch_size", request.algo)
    if field == "score_micro_batch_size" and request.algo == "sft":
        raise InputError("algo", "SFT has no scoring phase", request.algo)
    estimate(request)  # bad input raises here, naming its field
    tokens = _token_field(request, field)
    if tokens is not None:  # the framework's unit: tokens per GPU
        field, limit = tokens, _step_tokens(request)
        if tokens == "score_max_tokens_per_gpu" and request.score_max_tokens_per_gpu is None:
            request = request.model_copy(update={tokens: request.max_tokens_per_gpu})
    elif field == "score_micro_batch_size":
        limit = scored_sequences(request)
    else:
        limit = MAX_BATCH
    n = _largest(request, field, limit, allow_tight)
    past = (n or 0) + 1
    return LimitReport(
        request=request, search=f"max_{field}", **{f"max_{field}": n}, found=n is not None, allow_tight=allow_tight,
        at_limit=_limit_candidate(request, field, n) if n else None,
        past_limit=_limit_candidate(request, field, past) if past <= limit else None,
        elapsed_ms=round((time.perf_counter() - start) * 1e3, 3),
    )


def _within_budget(dataset_samples: int, budget_seconds: float) -> Callable[[EstimateRequest], bool]:
    """``memplan.step_time``'s wall time for the data set at most ``budget_seconds`` (False where the time model
    cannot run the request)."""

    def within(req: EstimateRequest) -> bool:
        t = timed(req, dataset_samples)
        return t is not None and t.wall_seconds is not None and t.wall_seconds <= budget_seconds

    return within


def gpu_limit(request: EstimateRequest, *, allow_tight: bool = False, time_budget_seconds: float | None = None,
              dataset_samples: int | None = None) -> LimitReport:
    """``min_gpus`` with the estimates at it and at the next smaller GPU count of ``_gpu_counts``. With
    ``time_budget_seconds`` (and ``dataset_samples``): the fewest GPUs that fit *and* go through the data set
    within the budget by ``memplan.step_time``'s estimate. The search assumes, as for memory, that more GPUs
    never take longer (more prompts per step, fewer steps); crossing onto the network can break that, so the
    answer is the first count found by doubling and bisection, not a proof that no smaller count passes."""
    start = time.perf_counter()
    estimate(request)  # bad input raises here, naming its field
    within = None
    if time_budget_seconds is not None:
        if not time_budget_seconds > 0:
            raise InputError("time_budget", "must be a positive duration (e.g. 6h, 90m, 3600s)", time_budget_seconds)
        if dataset_samples is None:
            raise InputError("dataset_samples", "is needed with a time budget: the prompts (DPO/SFT: samples) the "
                             "run goes through", None)
        within = _within_budget(dataset_samples, time_budget_seconds)
    clusters = _gpu_counts(request)
    i = _fewest(request, clusters, allow_tight, within)
    past = i - 1 if i is not None else len(clusters) - 1

    def at(cluster: str) -> PlanCandidate | None:
        report = _try(request.model_copy(update={"gpus": cluster}))
        return None if report is None else _candidate(request, report, dataset_samples)

    return LimitReport(
        request=request, search="min_gpus", min_gpus=None if i is None else _num_gpus(clusters[i]),
        found=i is not None, allow_tight=allow_tight, at_limit=None if i is None else at(clusters[i]),
        past_limit=at(clusters[past]) if past >= 0 else None, time_budget_seconds=time_budget_seconds,
        elapsed_ms=round((time.perf_counter() - start) * 1e3, 3),
    )


__all__ = [
    "COST_ORDER",
    "KNOBS",
    "MAX_CANDIDATES",
    "OBJECTIVES",
    "Knob",
    "LimitReport",
    "Objective",
    "PlanCandidate",
    "PlanReport",
    "batch_limit",
    "candidate_cost",
    "gpu_limit",
    "max_micro_batch_size",
    "max_rollout_batch_size",
    "min_gpus",
    "objective_key",
    "plan",
]
