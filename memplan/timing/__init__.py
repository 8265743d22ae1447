"""Time per step: how long one step of a planned run takes, phase by phase, and the whole run for a data set.

``step_time(request)`` resolves the request with the estimator's own ``resolve`` (the same roles, sharding,
batch geometry and engine the memory estimate uses), walks the phases of ``memplan.timing.phases`` and returns a
frozen ``StepTime``. The peaks are the datasheets' (``memplan/catalog/gpu_perf.json``); the achievable fractions
are stated constants with their sources (``memplan.timing.hardware``), not fitted to any run.

Known limitations:

* Generation runs ``gen_len`` decode steps: HF ``generate`` and the hybrid engine keep every sequence to the longest
  (DeepSpeed-Chat pads to the maximum); vLLM's continuous batching also waits for the longest, but its KV reads and
  FLOPs follow ``gen_len_mean`` when given. Scoring and training take padded batches at ``prompt_len + gen_len``
  and packed ones at ``prompt_len + gen_len_mean`` (``memplan.timing.workload``); a long tail makes every rank
  wait for the slowest.
* Data-parallel ranks wait for the slowest at every collective (different response lengths, a slower GPU or
  host): the estimate is one rank's time.
* Not counted: NCCL latency of small messages (tensor-parallel decode all-reduces), Python between phases
  (DeepSpeed-Chat's per-token reward loops), data loading, logging, checkpoints, allocator retries near the
  memory limit, rule-based rewards, host-side contention when several GPUs share a PCIe switch.
* One PPO epoch and one generation batch per step; split placement runs the roles' phases one after another.
* Decode reads every weight once per step: with MoE, all experts (a batch routes tokens to most of them).
"""

from __future__ import annotations

from math import ceil

from memplan.errors import InputError
from memplan.estimator.resolve import GENERATES, Run, resolve
from memplan.report import EstimateRequest
from memplan.timing import phases
from memplan.timing.formulas import kv_bytes_per_token
from memplan.timing.hardware import get_perf
from memplan.timing.result import PhaseTime, StepTime, TimeItem
from memplan.timing.workload import Work, decode_lengths, mean_len, work

__all__ = ["PhaseTime", "StepTime", "TimeItem", "step_time"]

_PHASES = ("rollout", "scoring", "actor_update", "critic_update")


def step_time(request: EstimateRequest | None = None, /, *, dataset_samples: int | None = None, epochs: int = 1,
              **kwargs) -> StepTime:
    """Seconds per step of ``request``, per phase; tokens per second per GPU; and, given the number of prompts
    (DPO/SFT: samples) in the data set, the steps and wall time of ``epochs`` passes over it.

    ``step_time(EstimateRequest(...))`` or ``step_time(model=..., algo=..., gpus=..., **knobs)``, as ``estimate``.
    Raises ``InputError`` (naming the field) or pydantic's ``ValidationError`` on bad input."""
    if request is None:
        request = EstimateRequest(**kwargs)
    elif kwargs:
        request = EstimateRequest.model_validate({**request.model_dump(exclude_unset=True), **kwargs})
    if dataset_samples is not None and dataset_samples < 1:
        raise InputError("dataset_samples", "must be at least 1", dataset_samples)
    if epochs < 1:
        raise InputError("epochs", "must be at least 1", epochs)
    run = resolve(request)
    perf = get_perf(run.gpu_name)
    dtype = request.dtype
    blocks: list[phases.Block] = []
    generates = run.algo in GENERATES
    step_work = work(run, request)  # the tokens each phase puts through its models (workload)
    if generates:
        blocks += phases.rollout(run, perf, dtype, request)
    blocks += phases.scoring(run, perf, dtype, request, step_work)
    for role in run.roles:
        if role.trainable:
            blocks += phases.update(run, perf, dtype, role, step_work)
    total = sum(b.seconds for b in blocks)
    lengths = _phase_lengths(run, request, step_work)
    phase_times = []
    for name in _PHASES:
        mine = [b for b in blocks if b.phase == name]
        if not mine:
            continue
        seconds = sum(b.seconds for b in mine)
        phase_times.append(PhaseTime(
            phase=name, seconds=seconds, share=seconds / total if total else 0.0,
            items=tuple(TimeItem(role=b.role, what=b.what, seconds=b.seconds, bound=b.bound) for b in mine),
            tokens=lengths.get(name)))
    actor = run.roles[0]
    replicas = (run.num_gpus // len(run.groups) if run.groups else run.num_gpus) // actor.sharding.tp
    if generates:
        group = max(1, run.rollout_seqs // max(1, request.rollout_batch_size or request.micro_batch_size))
        prompts = run.rollout_seqs // group * replicas
    else:  # one micro batch per GPU; packed under Ulysses, its sequences are the sequence-parallel group's
        prompts = step_work.trained.seqs // (2 if run.algo == "dpo" else 1) * replicas // run.sp
    tokens = step_work.trained.tokens * replicas  # the tokens actually processed: padded, or packed at the mean length
    steps = wall = None
    if dataset_samples is not None:
        steps = ceil(dataset_samples * epochs / prompts)
        wall = steps * total
    dominant = max(phase_times, key=lambda p: p.seconds).phase
    return StepTime(
        algo=run.algo, gpu=run.gpu_name, num_gpus=run.num_gpus, phases=tuple(phase_times), seconds_per_step=total,
        prompts_per_step=prompts, tokens_per_step=tokens,
        tokens_per_second_per_gpu=tokens / total / run.num_gpus if total else 0.0,
        dataset_samples=dataset_samples, epochs=epochs, steps=steps, wall_seconds=wall, dominant_phase=dominant,
        notes=_notes(run, request),
    )


def _phase_lengths(run: Run, request: EstimateRequest, step_work: Work) -> dict[str, str]:
    """Which tokens each phase put through its models (``workload``), one line per phase."""
    out = {}
    if run.algo in GENERATES:
        out["rollout"] = "generated on other GPUs" if run.rollout_engine == "remote" else (
            f"prefill {run.prompt_len} tokens; decode " + decode_lengths(run, request)[1])
    scored, trained = step_work
    out["scoring"] = f"{scored.seqs} seqs per GPU in {scored.calls} call(s): {scored.basis}"
    out["actor_update"] = out["critic_update"] = (f"{trained.tokens} tokens per GPU in {trained.calls} micro "
                                                  f"batch(es): {trained.basis}")
    return out


def _notes(run: Run, request: EstimateRequest) -> tuple[str, ...]:
    notes = []
    if run.algo in GENERATES:
        mean, _ = decode_lengths(run, request)
        if mean != run.gen_len:
            notes.append(f"vLLM decodes gen_len ({run.gen_len}) steps, the longest answer, its reads and FLOPs at "
                         f"gen_len_mean ({mean}): the batch waits for its longest sequence, and each data-parallel "
                         "rank for the slowest rank — a long tail of response lengths, or one slow GPU, sets the "
                         "real step")
        else:
            notes.append(f"every response is taken at gen_len ({run.gen_len} tokens): the batch waits for its "
                         "longest sequence, and each data-parallel rank for the slowest rank — a long tail of "
                         "response lengths, or one slow GPU, sets the real step")
        if run.rollout_engine == "remote":
            notes.append("rollout_engine 'remote': the generation itself runs on other GPUs and is not counted; "
                         "only the weight sync to them is")
        if run.rollout_engine == "vllm":
            actor = run.roles[0]
            free = run.vllm_utilization * run.capacity_bytes - actor.num_params * run.e / run.vllm_tp
            need = run.rollout_seqs * (run.prompt_len + run.gen_len) * kv_bytes_per_token(actor.spec, run.e)
            if need > free:
                notes.append(f"vLLM's KV cache ({max(free, 0) / 2**30:.1f} GiB per GPU at gpu_memory_utilization "
                             f"{run.vllm_utilization}) holds fewer than the {run.rollout_seqs} sequences per GPU: it "
                             "generates them in waves (preempting), slower than estimated")
        if run.tp > 1 or run.inference_tp > 1 or (run.rollout_engine == "vllm" and run.vllm_tp > 1):
            notes.append("tensor-parallel decode: the two all-reduces per layer and token are latency-bound "
                         "(~10 µs each) and not counted")
    if run.train_batch is not None:
        notes.append(f"packed sequences counted at {mean_len(run, request)} tokens each: attention's quadratic term "
                     "grows with the spread of the lengths (the mean of s² exceeds the square of the mean), and "
                     "small micro batches run their matmuls below the efficiency assumed (not counted)")
        if request.max_tokens_per_gpu is not None or request.score_max_tokens_per_gpu is not None:
            notes.append("token cap: micro batches counted over the step's sequences, ceil(tokens / (cap × sp)); "
                         "verl splits each PPO mini-batch on its own (up to one more per mini-batch)")
    if any(r.sharding.offload_optimizer or r.sharding.offload_params for r in run.roles):
        notes.append("CPU offload: GPUs that share a PCIe switch or a CPU socket share its bandwidth (DGX A100: two "
                     "GPUs per switch); the estimate gives each GPU its own link")
    if run.placement == "split":
        notes.append("placement 'split': the roles' phases are counted one after another, as a synchronous step "
                     "runs them; overlapping them (asynchronous RL) would shorten the step")
    if request.dtype == "fp32":
        notes.append("dtype fp32: matmuls counted at the bf16 tensor-core peak (TF32), an optimistic bound")
    return tuple(notes)
