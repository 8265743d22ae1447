"""The tokens each phase of a step puts through a model, per GPU, and in how many launches — from the same resolved
run (and the same ``memplan.estimator.tokens`` rules) as the memory estimate.

* **padded** (no packing): every sequence at ``prompt_len + gen_len`` (``Run.train_seq_len``), ``micro batch``
  sequences per launch, as before.
* **packed** (verl ``use_remove_padding``, OpenRLHF ``packing_samples``, TRL ``padding_free``): every sequence at
  its mean length ``prompt_len + gen_len_mean`` (``gen_len`` when no mean is given); the linear layers see only
  the packed tokens, and flash-attn's varlen kernel attends within each sequence (``cu_seqlens``), so the
  attention's quadratic term is per sequence — at the mean length, not over the packed row.
* **token cap** (verl ``use_dynamic_bsz``: ``dp_actor.py::update_policy`` / ``compute_log_prob`` call
  ``seqlen_balancing.py::rearrange_micro_batches`` with ``max_token_len = cap × ulysses_sequence_parallel_size``,
  which makes ``min(sequences, ceil(total tokens / max_token_len))`` balanced micro batches): each one a forward
  (and backward) launch with its own ZeRO-3 / FSDP gathers. verl splits each PPO mini-batch on its own (up to one
  more micro batch per mini-batch than counted here); OpenRLHF's first fit can add one.
* **Ulysses** (``sequence_parallel`` = sp): a sequence-parallel group of sp GPUs takes the micro batches of sp GPUs'
  worth of sequences together and slices each packed row over its sp GPUs (``ulysses_pad_and_slice_inputs``):
  per GPU the same tokens as without it, in sp times the launches when the micro batch is counted in sequences
  (``ppo_micro_batch_size_per_gpu`` is per sequence-parallel group: ``fsdp_workers.py`` divides the mini-batch
  by world // sp and leaves the micro batch); attention heads split over the group
  (each GPU attends all of a sequence for a/sp heads): per GPU the same attention FLOPs.

Per GPU means per model replica under tensor parallelism (its tp GPUs share the replica's tokens; sp needs tp 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil
from typing import NamedTuple

from memplan.estimator.resolve import GENERATES, Run
from memplan.report import EstimateRequest


@dataclass(frozen=True, kw_only=True, slots=True)
class Passes:
    """One model's forward (or training) passes over a phase's sequences on one GPU."""

    seqs: int
    """Sequences the GPU's share of the work covers (a sequence-parallel GPU: its 1/sp of sp GPUs' sequences)."""
    seq_len: int
    """The length every sequence is counted at: the padded length, or the packed mean length."""
    tokens: int
    """Tokens per GPU through the layers: ``seqs × seq_len`` (one capped micro batch for SFT/DPO under a cap)."""
    calls: int
    """Forward (/backward) launches per GPU."""
    basis: str
    """Which length, and what sized the launches: the report's line."""


def mean_len(run: Run, request: EstimateRequest) -> int:
    """A sequence's mean length: ``prompt_len + gen_len_mean`` (``gen_len`` when not given) for the algorithms
    that generate, the padded length otherwise — ``resolve._token_batches``' ``mean``."""
    if run.algo not in GENERATES:
        return run.train_seq_len
    return run.prompt_len + (request.gen_len_mean or run.gen_len)


def _caps(request: EstimateRequest) -> tuple[int | None, int | None]:
    """(training cap, scoring cap) per GPU: the scoring cap defaults to the training one, as ``resolve`` has it."""
    cap = request.max_tokens_per_gpu
    return cap, (request.score_max_tokens_per_gpu if request.score_max_tokens_per_gpu is not None else cap)


def _packed(run: Run) -> bool:
    return run.train_batch is not None


def passes(run: Run, request: EstimateRequest, seqs: int, *, scoring: bool) -> Passes:
    """``seqs`` sequences per GPU through one model, in training micro batches or (``scoring``) scoring forwards."""
    per_call = run.score_seqs if scoring else run.train_seqs
    if not _packed(run):
        seq = run.train_seq_len
        return Passes(seqs=seqs, seq_len=seq, tokens=seqs * seq, calls=max(1, ceil(seqs / max(1, per_call))),
                      basis=f"{seq} tokens each (padded to the longest)")
    sp, mean = run.sp, mean_len(run, request)
    cap = _caps(request)[1 if scoring else 0]
    group = seqs * sp  # the sequence-parallel group's sequences
    lengths = _lengths(run, request, mean)
    if cap is None:
        calls = max(1, ceil(group / max(1, per_call)))
        what = f"{per_call} sequences per launch"
    else:  # verl rearrange_micro_batches: min(sequences, ceil(total / (cap × sp)))
        calls = max(1, min(group, ceil(group * mean / (cap * sp))))
        what = f"token cap {cap} per GPU"
    if sp > 1:
        what += f", sliced over {sp} sequence-parallel GPUs"
    return Passes(seqs=seqs, seq_len=mean, tokens=seqs * mean, calls=calls, basis=f"{lengths}; {what}")


def step_passes(run: Run, request: EstimateRequest) -> Passes:
    """SFT's and DPO's step, one training micro batch per GPU: its ``train_seqs`` padded, or the packed micro
    batch ``tokens.micro_batch`` made (under a cap: the cap's sequences; ``seqs`` then counts the sequences of
    the whole sequence-parallel group, ``tokens`` this GPU's slice)."""
    if not _packed(run):
        return passes(run, request, run.train_seqs, scoring=False)
    batch = run.train_batch
    return Passes(seqs=batch.seqs, seq_len=run.train_seq_len, tokens=batch.tokens, calls=1,
                  basis=f"packed micro batch: {batch.basis}")


class Work(NamedTuple):
    """The step's passes through each model, worked out once per ``step_time``."""

    scored: Passes
    """A scoring forward over the step's sequences (DPO: the reference over the step's pairs)."""
    trained: Passes
    """The training passes of each trained model."""


def work(run: Run, request: EstimateRequest) -> Work:
    """The scoring and training passes of ``run``'s step."""
    if run.algo in GENERATES:
        return Work(scored=passes(run, request, run.rollout_seqs, scoring=True),
                    trained=passes(run, request, run.rollout_seqs, scoring=False))
    trained = step_passes(run, request)
    if not _packed(run):
        return Work(scored=passes(run, request, run.train_seqs, scoring=True), trained=trained)
    # the reference scores the packed micro batch, a scoring micro batch (or cap) at a time
    calls = max(1, ceil(run.train_batch.seqs / max(1, run.score_batch.seqs)))
    return Work(scored=replace(trained, calls=calls), trained=trained)


def _lengths(run: Run, request: EstimateRequest, mean: int) -> str:
    if run.algo not in GENERATES:
        return f"packed at {mean} tokens"
    if request.gen_len_mean is None:
        return f"packed at {mean} tokens (no gen_len_mean given: every answer at gen_len)"
    return f"packed at the mean {mean} tokens (prompt {run.prompt_len} + gen_len_mean {request.gen_len_mean})"


def decode_lengths(run: Run, request: EstimateRequest) -> tuple[int, str]:
    """(mean tokens a sequence generates, which length the decode assumes). vLLM's continuous batching takes
    finished sequences out of the batch (``Scheduler``: a finished sequence group frees its slot): its decode
    runs ``gen_len`` steps (the longest answer), each reading the weights once, while the KV cache it reads and
    the FLOPs follow the answers' mean length. HF ``generate`` and the hybrid engine keep a finished sequence in
    the batch, padding it (``unfinished_sequences`` only masks the next token), until the longest one stops:
    every sequence at ``gen_len``."""
    mean = request.gen_len_mean or run.gen_len
    if run.rollout_engine == "vllm" and mean != run.gen_len:
        return mean, (f"{run.gen_len} steps (the longest answer); KV reads and FLOPs at the mean {mean} "
                      "(continuous batching drops finished sequences)")
    if run.rollout_engine == "vllm":
        return run.gen_len, f"{run.gen_len} tokens per answer (no gen_len_mean given)"
    return run.gen_len, f"every answer at {run.gen_len} tokens (the batch runs to its longest)"
