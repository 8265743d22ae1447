"""DPO (Rafailov et al. 2023; TRL DPOTrainer's concatenated forward).

Resident: policy (the actor, trained) and reference (frozen; absent when its log-probs are precomputed,
``ref='none'``; the LoRA-disabled policy with ``ref='lora-shared'``). No generation.

A micro-batch of b preference pairs is 2b sequences of ``seq_len`` tokens: chosen and rejected concatenated
along the batch, through the reference and then the policy in one forward each.

1. scoring — reference log-probs of chosen + rejected (no autograd), as TRL computes them inside the step.
2. actor_update — policy log-probs, loss −log σ(β·((π_c − ref_c) − (π_r − ref_r))), backward, step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memplan.harness.steps.common import Ctx, reference_logprobs, sequence_logprobs, train_micro_batches

BETA = 0.1


def step(ctx: Ctx, n: int) -> None:
    s, m, probe = ctx.setup, ctx.models, ctx.probe
    b, t = s.micro_batch_size, s.seq_len
    with probe.section("actor", "other"):
        pairs = torch.randint(0, ctx.vocab, (2 * b, t), device=ctx.device)  # chosen rows, then rejected rows
    with probe.section("actor", "buffer"):
        ref_sum = torch.zeros(2 * b, device=ctx.device)
    if "scoring" in s.phases:
        with probe.phase("scoring", n):
            ref_logp = reference_logprobs(ctx, pairs, t - 1, size=2 * s.score_micro_batch_size)
            with probe.section("actor", "buffer"):
                ref_sum = ref_logp.sum(-1)
            del ref_logp

    with probe.phase("actor_update", n):
        def loss(start: int, end: int) -> torch.Tensor:
            logp = sequence_logprobs(m.actor, pairs[start:end], t - 1, probe, "actor").sum(-1) - ref_sum
            return -F.logsigmoid(BETA * (logp[:b] - logp[b:])).mean()

        train_micro_batches(ctx, "actor", 2 * b, loss, size=2 * b)
        ctx.trainers["actor"].step()
