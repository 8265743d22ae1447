"""The service's own schemas: catalog listings and the compare and plan bodies. Estimates and plans use the
library's models.

``EstimateRequest`` and ``Report`` (``memplan.report``) are the request and response of /v1/estimate
themselves, not copies; this module holds only what the library has no model for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from memplan.comparison import compared_algos
from memplan.estimator import for_algorithm
from memplan.planner import KNOBS, Knob, Objective
from memplan.report import Algo, EstimateRequest, Report, Role, whole_number

HEADLINE = {
    "model": "meta-llama/Llama-2-7b-hf",
    "algo": "ppo",
    "gpus": "8xA100-40GB",
}
# The ReMax paper's script (REFERENCE.md): actor and critic ZeRO-2, reference and reward ZeRO-3 with
# parameter offload, bf16, gradient checkpointing, hybrid-engine generation, batch 1, 256 + 256 tokens.
REMAX_SETUP = {
    **HEADLINE,
    "actor_zero_stage": 2,
    "critic_zero_stage": 2,
    "ref_zero_stage": 3,
    "reward_zero_stage": 3,
    "offload_ref": True,
    "offload_reward": True,
    "dtype": "bf16",
    "gradient_checkpointing": True,
    "rollout_engine": "hybrid-engine",
    "micro_batch_size": 1,
    "prompt_len": 256,
    "gen_len": 256,
}
INLINE = {
    "model": {
        "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True,
    },
    "algo": "grpo",
    "gpus": "1xH100-80GB",
    "group_size": 8,
    "lora_rank": 64,
}

ESTIMATE_EXAMPLES = {
    "headline": {"summary": "Will PPO on Llama-2-7B fit on 8×A100-40GB?", "value": HEADLINE},
    "remax-paper-ppo": {"summary": "PPO in the ReMax paper's setup", "value": REMAX_SETUP},
    "remax-paper-remax": {"summary": "ReMax in the same setup", "value": {**REMAX_SETUP, "algo": "remax"}},
    "inline-architecture": {"summary": "GRPO + LoRA on an architecture given inline", "value": INLINE},
}


class ModelInfo(BaseModel):
    """A catalog model (GET /v1/models)."""

    name: str = Field(examples=["meta-llama/Llama-2-7b-hf"])
    aliases: list[str] = Field(default_factory=list, examples=[["llama2-7b"]])
    num_params: int = Field(examples=[6_738_415_616])
    model_type: str = Field(examples=["llama"])
    source: str = Field("", description="Where the config facts come from")


class GPUInfo(BaseModel):
    """A catalog GPU (GET /v1/gpus)."""

    name: str = Field(examples=["A100-40GB"])
    memory_bytes: int
    cuda_context_bytes: int
    bf16_tflops: float | None = None
    source: str = Field("", description="Datasheet")


class AlgorithmInfo(BaseModel):
    """An algorithm and the models it keeps resident with default knobs (GET /v1/algorithms)."""

    name: Algo
    resident_models: list[Role]
    description: str


class CompareRequest(BaseModel):
    """Either explicit ``requests``, or one ``base`` request repeated for each of ``algos``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"base": REMAX_SETUP, "algos": ["ppo", "remax", "grpo"]}]},
    )

    requests: list[EstimateRequest] | None = Field(None, min_length=1, max_length=16)
    base: EstimateRequest | None = None
    algos: list[Algo] | None = Field(
        None, min_length=1, max_length=6, description="With 'base': the algorithms to compare. Unset: ppo, grpo, "
        "remax, rloo, dpo — under base's framework, those of them it runs (memplan.comparison.compared_algos); "
        "one the framework does not run is a 422 naming 'algos'")

    @model_validator(mode="after")
    def _one_form(self) -> CompareRequest:
        if (self.requests is None) == (self.base is None):
            raise ValueError("give either 'requests' or 'base' (with 'algos', or the default list)")
        if self.base is None and self.algos is not None:
            raise ValueError("'algos' goes with 'base'")
        return self

    def expand(self) -> list[EstimateRequest]:
        if self.requests is not None:
            return list(self.requests)
        assert self.base is not None
        names, _notes = compared_algos(self.base, self.algos)
        # each algorithm's request: the options it has no use for back at their defaults (``for_algorithm``)
        return [for_algorithm(self.base, a) for a in names]


class PlanRequest(BaseModel):
    """POST /v1/plan: the run to plan, the knobs the search may change, how many configurations to return."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"request": REMAX_SETUP, "allow": ["zero_stage", "offload", "tp"]}]},
    )

    request: EstimateRequest
    allow: list[Knob] | None = Field(None, max_length=len(KNOBS), description="Knobs to search (default: all)",
                                     examples=[["zero_stage", "offload", "gradient_checkpointing"]])
    max_results: StrictInt = Field(20, ge=1, le=100, description="Configurations to return, best first by objective")
    allow_tight: StrictBool = Field(False, description="Count a TIGHT configuration (its peak within memplan's "
                                    "error band of capacity) as fitting when its point estimate fits")
    objective: Objective = Field("fastest", description="Rank the configurations that fit by estimated time per "
                                 "prompt (fastest), GPU count then time (fewest-gpus) or GPU-hours (cheapest); "
                                 "LoRA for full fine-tuning last, candidate_cost breaking ties",
                                 examples=["fastest"])
    dataset_samples: StrictInt | None = Field(
        None, ge=1, le=1 << 40, description="Prompts (DPO/SFT: samples) in the data set: each candidate's wall "
        "time and GPU-hours", examples=[45000])
    price_per_gpu_hour: float | None = Field(
        None, gt=0, le=1e6, strict=True, allow_inf_nan=False, description="Price of one GPU-hour: each candidate's price for the "
        "data set (with dataset_samples)", examples=[2.0])

    _whole_numbers = field_validator("max_results", "dataset_samples", mode="before")(whole_number)


class LimitRequest(BaseModel):
    """POST /v1/plan/min-gpus: the run whose fewest GPUs to find (the GPU kind and knobs as given)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [{"request": REMAX_SETUP}]},
    )

    request: EstimateRequest
    allow_tight: StrictBool = Field(False, description="Count a TIGHT configuration (its peak within memplan's "
                                    "error band of capacity) as fitting when its point estimate fits")


class GpuLimitRequest(LimitRequest):
    """POST /v1/plan/min-gpus: the run whose fewest GPUs to find, optionally within a wall-time budget."""

    model_config = ConfigDict(
        extra="forbid", frozen=True,
        json_schema_extra={"examples": [{"request": REMAX_SETUP}, {"request": REMAX_SETUP,
                                         "time_budget_seconds": 21600, "dataset_samples": 45000}]},
    )

    time_budget_seconds: float | None = Field(
        None, gt=0, le=1e9, strict=True, allow_inf_nan=False, description="The fewest GPUs that fit and go through "
        "the data set within this many seconds (memplan.step_time's estimate); needs dataset_samples",
        examples=[21600.0])
    dataset_samples: StrictInt | None = Field(
        None, ge=1, le=1 << 40, description="Prompts (DPO/SFT: samples) in the data set, for the time budget",
        examples=[45000])

    _whole_numbers = field_validator("dataset_samples", mode="before")(whole_number)


class BatchLimitRequest(LimitRequest):
    """POST /v1/plan/max-batch: the run whose largest batch to find, and which batch."""

    model_config = ConfigDict(
        extra="forbid", frozen=True,
        json_schema_extra={"examples": [{"request": {**REMAX_SETUP, "algo": "remax"}, "field": "micro_batch_size"}]},
    )

    field: Literal["micro_batch_size", "rollout_batch_size", "score_micro_batch_size"] = Field(
        "micro_batch_size", description="The batch to maximise: sequences per forward/backward, prompts per "
        "generation (PPO, GRPO, ReMax, RLOO), or sequences per scoring forward (at most those a GPU scores)")


class VerlScript(BaseModel):
    """POST /v1/verl/estimate: a verl launch script and the GPU kind it runs on."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [{
        "script": "python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo "
                  "actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct actor_rollout_ref.rollout.name=vllm "
                  "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 actor_rollout_ref.rollout.n=5",
        "gpu": "H100-80GB"}]})

    script: str = Field(min_length=1, max_length=60_000, description="The launch script, or its key=value overrides")
    gpu: str = Field(min_length=1, max_length=64, description="GPU kind (GET /v1/gpus); the count is the script's "
                     "trainer.nnodes × trainer.n_gpus_per_node", examples=["H100-80GB"])


class VerlEstimate(BaseModel):
    """The request read from a verl script, what was read differently or not at all, and its report."""

    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    notes: list[str]
    report: Report


class TrlRecipe(BaseModel):
    """POST /v1/trl/estimate: a TRL recipe (GRPO, RLOO, DPO, SFT), its accelerate config and the GPU kind."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [{
        "recipe": "model_name_or_path: Qwen/Qwen2.5-7B\nper_device_train_batch_size: 4\n"
                  "gradient_accumulation_steps: 4\nnum_generations: 8\nmax_completion_length: 1024\n"
                  "use_vllm: true\nvllm_mode: colocate\n",
        "accelerate_config": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\nnum_processes: 8\n",
        "gpu": "H100-80GB", "prompt_len": 512}]})

    recipe: str = Field(min_length=1, max_length=60_000, description="The recipe YAML (--config) or the launch "
                        "command's --key value arguments")
    accelerate_config: str | None = Field(None, min_length=1, max_length=60_000, description="accelerate's config "
                                          "YAML: engine, sharding, num_processes (without it: one unsharded process "
                                          "per GPU)")
    gpu: str = Field(min_length=1, max_length=64, description="GPU kind (GET /v1/gpus), the count being the "
                     "accelerate config's num_processes; or the cluster ('8xH100-80GB')", examples=["H100-80GB"])
    algo: Literal["grpo", "rloo", "dpo", "sft"] = Field("grpo", description="The TRL trainer the recipe runs")
    prompt_len: StrictInt | None = Field(None, ge=1, le=1 << 20, description="Longest prompt in tokens (TRL 1.16 does "
                                   "not truncate prompts); default: the recipe's max_prompt_length, else 256")

    _whole_numbers = field_validator("prompt_len", mode="before")(whole_number)


class TrlEstimate(VerlEstimate):
    """The request read from a TRL recipe, what was read differently or not at all, and its report."""


class OpenRLHFScript(BaseModel):
    """POST /v1/openrlhf/estimate: an OpenRLHF launch command and the GPU kind it runs on."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [{
        "script": "python3 -m openrlhf.cli.train_ppo_ray --actor.model_name_or_path Qwen/Qwen2.5-7B "
                  "--reward.model_name_or_path Qwen/Qwen2.5-7B --train.colocate_all --vllm.num_engines 8 "
                  "--vllm.gpu_memory_utilization 0.5 --vllm.enable_sleep --ds.zero_stage 3 "
                  "--actor.gradient_checkpointing_enable --train.micro_batch_size 4 --rollout.micro_batch_size 8",
        "gpu": "H100-80GB"}]})

    script: str = Field(min_length=1, max_length=60_000, description="The launch command (its --key value "
                        "arguments; OpenRLHF 0.11's dotted or earlier flat names)")
    gpu: str = Field(min_length=1, max_length=64, description="GPU kind (GET /v1/gpus); the count follows from the "
                     "models' num_nodes × num_gpus_per_node", examples=["H100-80GB"])


class DsChatScript(BaseModel):
    """POST /v1/deepspeed-chat/estimate: a DeepSpeed-Chat step-3 launch command and the cluster it runs on."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [{
        "script": "deepspeed main.py --actor_model_name_or_path meta-llama/Llama-2-7b-hf "
                  "--critic_model_name_or_path facebook/opt-350m --actor_zero_stage 3 --critic_zero_stage 3 "
                  "--enable_hybrid_engine --actor_gradient_checkpointing",
        "gpus": "8xA100-80GB"}]})

    script: str = Field(min_length=1, max_length=60_000, description="The launch command (its --key value "
                        "arguments, DeepSpeed-Chat's step3_rlhf_finetuning/main.py)")
    gpus: str = Field(min_length=1, max_length=64, description="The cluster, with its count (the deepspeed "
                      "launcher runs one process per GPU; the command holds no count)", examples=["8xA100-80GB"])
    algo: Literal["ppo", "remax"] = Field("ppo", description="ppo (DeepSpeed-Chat) or remax (ReMax's fork of the "
                                          "same trainer: no critic)")


class DsChatEstimate(VerlEstimate):
    """The request read from a DeepSpeed-Chat command, what was read differently or not at all, and its report."""


class OpenRLHFEstimate(VerlEstimate):
    """The request read from an OpenRLHF command, what was read differently or not at all, and its report."""
