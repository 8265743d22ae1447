"""Step recipes, one per algorithm: ``RECIPES[algo](ctx, step_number)`` runs one training step.

Each recipe is a short function listing, phase by phase, what the algorithm runs on a GPU (see each
module's docstring); the shared blocks are in ``common.py`` and ``optim.py``.
"""

from __future__ import annotations

from memplan.harness.models import Models
from memplan.harness.setup import Setup
from memplan.harness.steps import dpo, grpo, ppo, remax, rloo, sft
from memplan.harness.steps.common import KERNEL, Ctx, track_models
from memplan.harness.steps.optim import Trainer
from memplan.harness.steps.probe import Probe

RECIPES = {
    "ppo": ppo.step,
    "grpo": grpo.step,
    "remax": remax.step,
    "rloo": rloo.step,
    "dpo": dpo.step,
    "sft": sft.step,
}

__all__ = ["RECIPES", "Probe", "run_steps"]


def run_steps(setup: Setup, models: Models, probe: Probe, *, device: str, steps: int = 2,
              decode_steps: int | None = None, host_device: str | None = None) -> None:
    """Run ``steps`` training steps of ``setup`` on built ``models``, reporting to ``probe``.

    Parameters and buffers are announced to the probe first; each trained model gets its ``Trainer``
    (masters and optimizer, on ``host_device`` with optimizer offload); then the algorithm's recipe runs.
    """
    track_models(models, probe)
    trainers = {"actor": Trainer("actor", models.actor, setup, probe, host_device)}
    if models.critic is not None:
        trainers["critic"] = Trainer("critic", models.critic, setup, probe, host_device)
    ctx = Ctx(setup=setup, models=models, trainers=trainers, probe=probe, device=device, decode_steps=decode_steps)
    token = KERNEL.set(setup.logprob_kernel)
    try:
        for n in range(1, steps + 1):
            RECIPES[setup.algo](ctx, n)
    finally:
        KERNEL.reset(token)
