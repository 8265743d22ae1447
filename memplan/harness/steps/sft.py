"""SFT (TRL SFTTrainer): next-token cross-entropy with transformers' own loss.

Resident: the actor only. One micro-batch of ``micro_batch_size`` sequences of ``seq_len`` tokens;
transformers' ``ForCausalLMLoss`` upcasts the logits to fp32 before the cross-entropy (``causal_lm_loss``
computes it the same way, outside the model, so that its tensors can be labelled).

1. actor_update — forward with ``labels``, backward, optimizer step.
"""

from __future__ import annotations

import torch

from memplan.harness.steps.common import (
    KERNEL,
    Ctx,
    causal_lm_loss,
    chunked_causal_lm_loss,
    fp32_fused_logprobs,
    train_micro_batches,
)


def step(ctx: Ctx, n: int) -> None:
    s, m, probe = ctx.setup, ctx.models, ctx.probe
    with probe.section("actor", "other"):
        batch = torch.randint(0, ctx.vocab, (s.micro_batch_size, s.seq_len), device=ctx.device)
    with probe.phase("actor_update", n):
        def loss(a: int, b: int) -> torch.Tensor:
            if KERNEL.get() == "chunked":  # TRL's fused LM head: no logits
                return chunked_causal_lm_loss(m.actor, batch[a:b], probe, "actor")
            if KERNEL.get() == "fp32-fused":  # every next token's −log-prob, OpenRLHF's way
                return -fp32_fused_logprobs(m.actor, batch[a:b], probe, "actor").mean()
            logits = m.actor(input_ids=batch[a:b], use_cache=False).logits
            return causal_lm_loss(logits, batch[a:b], probe, "actor")

        train_micro_batches(ctx, "actor", s.micro_batch_size, loss)
        ctx.trainers["actor"].step()
