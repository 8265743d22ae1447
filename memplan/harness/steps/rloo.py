"""RLOO (Ahmadian et al. 2024, "Back to Basics"; TRL RLOOTrainer).

Resident: actor (trained), reference (frozen; TRL's β defaults to 0.05), reward model.

1. rollout — ``group_size`` (k) samples per prompt.
2. scoring — actor and reference log-probs, rewards; KL folded into the reward: r − β·Σ(log π − log π_ref).
3. actor_update — leave-one-out baseline: A_i = r_i − mean_{j≠i} r_j, REINFORCE on Σ log π, backward, step.
"""

from __future__ import annotations

import torch

from memplan.harness.steps.common import (
    Ctx, make_prompts, reference_logprobs, reinforce_update, rewards, old_logprobs, rollout, score,
)

BETA = 0.05


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
                r = torch.zeros(seq.shape[0], device=seq.device)
            if ref is not None:
                r = r - BETA * (old - ref).sum(-1)
            grouped = r.view(-1, k)
            baseline = (grouped.sum(-1, keepdim=True) - grouped) / max(k - 1, 1)
            adv = (grouped - baseline).view(-1, 1)

    reinforce_update(ctx, n, seq, adv)
