"""What the planner's searches compare: a configuration evaluated (``PlanCandidate``), its cost terms
(``candidate_cost``), the objectives that rank them (``objective_key``), the report of a plan (``PlanReport``),
and the one test every search applies (``accepted``).

Nothing here searches: ``search`` (the knobs), ``limits`` (the largest batch) and ``fewest`` (the fewest GPUs)
build on it.
"""

from __future__ import annotations

from math import inf
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from memplan.comparison import timed
from memplan.errors import InputError
from memplan.estimator import estimate
from memplan.report import EstimateRequest, Report, Verdict

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
GENERATES = ("ppo", "grpo", "remax", "rloo")
"""The algorithms that generate rollouts (DPO and SFT train on a data set's sequences)."""
ZERO_FIELDS = {"actor": "actor_zero_stage", "critic": "critic_zero_stage", "reference": "ref_zero_stage",
               "reward": "reward_zero_stage"}
OFFLOAD_LEVEL = {"none": 0, "optimizer": 1, "optimizer+params": 2}
IDLE_LEVEL = {"none": 0, "params": 1, "optimizer": 1, "params+optimizer": 2}
"""``candidate_cost``'s count of CPU offloads: a trained role's offload and its idle offload, by what moves."""


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
      ``plan_fewest_gpus``, so its candidates share one count and rank fastest first);
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


def accepted(report: Report | PlanCandidate | None, allow_tight: bool = False) -> bool:
    """The planner's one test of a configuration: the verdict is FITS, or, with ``allow_tight``, TIGHT with the
    point estimate fitting (GPU memory, host RAM and vLLM's KV cache: ``Report.fits``). A FITS verdict implies
    ``fits``; a DOES NOT FIT one implies not."""
    return report is not None and (report.verdict == "fits" or allow_tight and report.fits)


def estimate_or_none(request: EstimateRequest) -> Report | None:
    """``estimate``, or None where the configuration is invalid (a search's option the request refuses)."""
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


def to_candidate(given: EstimateRequest, report: Report, dataset_samples: int | None = None,
                 price_per_gpu_hour: float | None = None) -> PlanCandidate:
    """``report`` as a candidate against the ``given`` request: its changes, cost and ``memplan.step_time``'s
    time (with the data set's wall time, GPU-hours and price where given)."""
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

