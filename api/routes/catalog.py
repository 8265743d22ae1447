"""GET /v1/models, /v1/gpus, /v1/algorithms: what the service knows. Static, so built once per process."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from api.schemas import AlgorithmInfo, GPUInfo, ModelInfo
from memplan import catalog

router = APIRouter(prefix="/v1", tags=["catalog"])

# Resident models with default knobs (tests check them against the estimator's reports).
ALGORITHMS = [
    AlgorithmInfo(name="ppo", resident_models=["actor", "critic", "reference", "reward"],
                  description="Proximal Policy Optimization: actor and value critic trained; frozen reference "
                  "(KL penalty) and reward model score each rollout."),
    AlgorithmInfo(name="grpo", resident_models=["actor", "reference"],
                  description="Group Relative Policy Optimization: group_size completions per prompt, advantages "
                  "relative to the group; no critic; rule-based reward by default (reward='model' adds one)."),
    AlgorithmInfo(name="remax", resident_models=["actor", "reference", "reward"],
                  description="ReMax: REINFORCE with the greedy completion's reward as baseline; each prompt is "
                  "generated twice (sampled, then greedy); no critic."),
    AlgorithmInfo(name="rloo", resident_models=["actor", "reference", "reward"],
                  description="REINFORCE Leave-One-Out: group_size samples per prompt, each baselined by the "
                  "others' mean reward; no critic."),
    AlgorithmInfo(name="dpo", resident_models=["actor", "reference"],
                  description="Direct Preference Optimization: chosen and rejected sequences through the policy "
                  "and a frozen reference; no generation."),
    AlgorithmInfo(name="sft", resident_models=["actor"],
                  description="Supervised fine-tuning: one trained model, no generation."),
]


@lru_cache(maxsize=1)
def _models() -> list[ModelInfo]:
    return [ModelInfo.model_validate(m, from_attributes=True) for m in catalog.list_models(fixtures=False)]


@lru_cache(maxsize=1)
def _gpus() -> list[GPUInfo]:
    return [GPUInfo.model_validate(g, from_attributes=True) for g in catalog.list_gpus()]


@router.get("/models", response_model=list[ModelInfo], summary="Catalog models")
async def models() -> list[ModelInfo]:
    """Every catalog model: name, aliases, parameter count (as transformers builds it), family, source. The
    synthetic test models (`memplan/tiny-*`) are not listed."""
    return _models()


@router.get("/gpus", response_model=list[GPUInfo], summary="Catalog GPUs")
async def gpus() -> list[GPUInfo]:
    """Every catalog GPU: memory, CUDA context, bf16 TFLOPS, datasheet."""
    return _gpus()


@router.get("/algorithms", response_model=list[AlgorithmInfo], summary="Algorithms")
async def algorithms() -> list[AlgorithmInfo]:
    """Every algorithm, the models it keeps resident with default knobs, and what it does."""
    return ALGORITHMS
