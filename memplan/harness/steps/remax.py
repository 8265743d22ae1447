"""ReMax (Li et al. 2023, arXiv 2310.10505; its DeepSpeed-Chat-based training script).

Resident: actor (trained), reference and reward model (frozen); no critic.

1. rollout — a sampled generation, then, one after the other, a greedy generation of the same prompts (the
   second pass starts after the first one's KV cache is freed).
2. scoring — actor and reference log-probs of the sampled answers; the reward model scores both the sampled
   and the greedy answers (the greedy reward is the baseline).
3. actor_update — REINFORCE with the greedy baseline: −(r − r_greedy − β·KL)·Σ log π, backward, optimizer step.
"""

from __future__ import annotations

import torch

from memplan.harness.steps.common import (
    Ctx, make_prompts, reference_logprobs, reinforce_update, rewards, old_logprobs, rollout, score,
)

KL_COEF = 0.1


def step(ctx: Ctx, n: int) -> None:
    s, m, probe = ctx.setup, ctx.models, ctx.probe
    g = s.gen_len
    with probe.phase("rollout", n):
        prompts = make_prompts(ctx, s.rollout_seqs)
        seq = rollout(ctx, prompts)
        greedy = rollout(ctx, prompts, greedy=True)
        with probe.section("actor", "buffer"):  # the attention masks the frameworks keep beside the ids
            masks = (torch.ones_like(seq), torch.ones_like(greedy))  # noqa: F841

    with probe.phase("scoring", n):
        old = old_logprobs(ctx, seq, g)
        ref = reference_logprobs(ctx, seq, g)
        r = score(ctx, lambda x: rewards(m.reward, x), seq, "reward", ())
        baseline = score(ctx, lambda x: rewards(m.reward, x), greedy, "reward", ())
        with probe.section("actor", "buffer"):  # experience kept for the update
            kl = (old - ref).sum(-1) if ref is not None else torch.zeros_like(r)
            adv = (r - baseline - KL_COEF * kl).view(-1, 1)

    reinforce_update(ctx, n, seq, adv)
