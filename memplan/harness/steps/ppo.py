"""PPO (Ouyang et al. 2022; DeepSpeed-Chat step 3, OpenRLHF, TRL PPOTrainer).

Resident: actor and critic (trained), reference and reward model (frozen; the reference is the actor with its
LoRA adapter disabled when ``ref='lora-shared'``).

1. rollout — the actor generates ``gen_len`` tokens for ``rollout_batch_size`` prompts with a KV cache.
2. scoring — no autograd, micro-batch by micro-batch: actor old log-probs, reference log-probs, reward
   (last token's score), critic values; then GAE advantages and returns (γ = λ = 1: reward-to-go).
3. actor_update — clipped policy loss (ε = 0.2) + k3 KL to the reference, backward, optimizer step.
4. critic_update — clipped value loss, backward, optimizer step.
"""

from __future__ import annotations

import torch

from memplan.harness.steps.common import (
    Ctx, clipped_policy_update, make_prompts, reference_logprobs, rewards, old_logprobs, rollout, score,
    token_values, train_micro_batches,
)

CLIP = 0.2
KL_COEF = 0.05


def step(ctx: Ctx, n: int) -> None:
    s, m, probe = ctx.setup, ctx.models, ctx.probe
    g = s.gen_len
    with probe.phase("rollout", n):
        seq = rollout(ctx, make_prompts(ctx, s.rollout_seqs))
        with probe.section("actor", "buffer"):
            mask = torch.ones_like(seq)  # the attention mask the frameworks keep beside the ids  # noqa: F841

    with probe.phase("scoring", n):
        old = old_logprobs(ctx, seq, g)
        ref = reference_logprobs(ctx, seq, g)
        reward = score(ctx, lambda x: rewards(m.reward, x), seq, "reward", ())
        values = score(ctx, lambda x: token_values(m.critic, x, g), seq, "critic", (g,))
        with probe.section("actor", "buffer"):  # experience kept for the updates
            returns = torch.zeros_like(values)
            returns[:, -1] = reward
            returns = returns.flip(-1).cumsum(-1).flip(-1)  # reward-to-go (KL is in the loss below)
            adv = returns - values
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)

    clipped_policy_update(ctx, n, seq, old, adv, ref, CLIP, KL_COEF)

    with probe.phase("critic_update", n):
        def critic_loss(a: int, b: int) -> torch.Tensor:
            v = token_values(m.critic, seq[a:b], g)
            clipped = values[a:b] + (v - values[a:b]).clamp(-CLIP, CLIP)
            return 0.5 * torch.max((v - returns[a:b]) ** 2, (clipped - returns[a:b]) ** 2).mean()

        train_micro_batches(ctx, "critic", seq.shape[0], critic_loss)
        ctx.trainers["critic"].step()
