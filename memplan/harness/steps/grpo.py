"""GRPO (Shao et al. 2024, DeepSeekMath; TRL GRPOTrainer, verl).

Resident: actor (trained); reference (when the KL coefficient β > 0, i.e. ``ref != 'none'``; the LoRA-disabled
actor with ``ref='lora-shared'``); reward model unless the reward is rule-based (the default).

1. rollout — ``group_size`` completions per prompt: ``rollout_batch_size × group_size`` sequences at once.
2. scoring — actor old log-probs, reference log-probs, rewards (zeros for a rule).
3. actor_update — group-normalised advantages (r − mean_group) / std_group, clipped surrogate + β·k3 KL,
   backward, optimizer step.
"""

from __future__ import annotations

import torch

from memplan.harness.steps.common import (
    Ctx, clipped_policy_update, make_prompts, reference_logprobs, rewards, old_logprobs, rollout, score,
)

CLIP = 0.2
BETA = 0.04


def step(ctx: Ctx, n: int) -> None:
    s, m, probe = ctx.setup, ctx.models, ctx.probe
    g, k = s.gen_len, s.group_size
    with probe.phase("rollout", n):
        seq = rollout(ctx, make_prompts(ctx, s.prompts).repeat_interleave(k, dim=0))
        with probe.section("actor", "buffer"):
            mask = torch.ones_like(seq)  # the attention mask the frameworks keep beside the ids  # noqa: F841

    with probe.phase("scoring", n):
        old = old_logprobs(ctx, seq, g)
        ref = reference_logprobs(ctx, seq, g)
        if m.reward is not None:
            r = score(ctx, lambda x: rewards(m.reward, x), seq, "reward", ())
        with probe.section("actor", "buffer"):  # experience kept for the update
            if m.reward is None:
                r = torch.zeros(seq.shape[0], device=seq.device)  # rule-based reward
            grouped = r.view(-1, k)
            adv = ((grouped - grouped.mean(-1, keepdim=True)) / (grouped.std(-1, keepdim=True) + 1e-4)).view(-1, 1)

    clipped_policy_update(ctx, n, seq, old, adv, ref, CLIP, BETA)
