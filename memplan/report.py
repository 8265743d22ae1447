"""The request and report models shared by the Python API, the CLI (``--json``) and the REST service.

These are the only pydantic models of the estimator path: the request is validated once at the edge
and resolved into frozen dataclasses (``memplan.estimator.resolve``); the hot path never touches pydantic
beyond building the report at the end, from values it computed itself (``trusted``: no re-validation).

Batch semantics (the frameworks disagree, so memplan states its own):

* ``rollout_batch_size`` — prompts per GPU in one generation call (default: ``micro_batch_size``);
  each prompt yields ``group_size`` completions (GRPO, RLOO; 1 for PPO); ReMax adds one greedy pass.
  TRL's GRPO ``per_device_train_batch_size`` counts completions: divide it by ``group_size``.
  verl's ``train_batch_size`` counts prompts over all GPUs: divide it by the number of GPUs.
* ``micro_batch_size`` — sequences per GPU in one forward/backward of training or scoring.
* ``score_micro_batch_size`` — sequences per GPU in one scoring forward (old log-probs, reference log-probs,
  rewards, values), when it differs from the training micro batch (default: ``micro_batch_size``); at most
  the sequences a GPU scores (rollout prompts × group size; DPO: the micro batch's pairs).
  verl's ``log_prob_micro_batch_size_per_gpu``, OpenRLHF's ``micro_rollout_batch_size``; DeepSpeed-Chat scores
  each generation batch whole.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictFloat, StrictInt, StringConstraints, Tag, computed_field, field_validator
from pydantic import ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Algo = Literal["ppo", "grpo", "remax", "rloo", "dpo", "sft"]
Role = Literal["actor", "critic", "reference", "reward"]
Phase = Literal["rollout", "scoring", "actor_update", "critic_update"]
DType = Literal["bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw-8bit", "sgd", "adafactor"]
OptimizerImpl = Literal["auto", "foreach", "fused", "for-loop"]
Offload = Literal["none", "optimizer", "optimizer+params"]
IdleOffload = Literal["none", "params", "optimizer", "params+optimizer"]
RefMode = Literal["separate", "lora-shared", "lora-adapter", "none"]
RolloutEngine = Literal["hf", "hybrid-engine", "vllm", "remote"]
Attention = Literal["sdpa", "flash", "eager"]
Engine = Literal["deepspeed", "fsdp", "torch"]
Placement = Literal["colocated", "split"]
Quantization = Literal["none", "int8", "int4"]
LoraTargets = Literal["all-linear", "attention"]
LogprobKernel = Literal["log-softmax", "fused", "fp32-fused", "chunked", "row-chunked"]
Verdict = Literal["fits", "tight", "does_not_fit"]
Framework = Literal["trl", "verl", "openrlhf", "deepspeed-chat"]

M = TypeVar("M", bound=BaseModel)
_new = object.__new__  # BaseModel defines no __new__; object's, called directly, skips a lookup

MAX_TOKENS = 1 << 20  # 1M tokens per sequence: longer is not a run anyone launches today
MAX_BATCH = 1 << 16
MAX_NAME = 256  # a catalog name or a local config path; longer is no model's name


def whole_number(value: object) -> object:
    """JSON Schema's integer is 256 or 256.0 (the same number): an integral float is that int; the fields stay
    strict otherwise — never true, "256", 2.5 or NaN (pydantic's lax int takes the first two, and a request
    must not mean what it does not say)."""
    return int(value) if value.__class__ is float and value.is_integer() else value  # type: ignore[attr-defined]


class ArchConfig(BaseModel):
    """An architecture given inline (REST clients, tests): the config.json fields memplan reads, bounded.

    Field names follow transformers' ``LlamaConfig``; ``model_type`` picks the family's parameter layout.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model_type: Literal[
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "opt", "gpt_neox", "gpt2", "mixtral"
    ] = Field("llama", description="transformers model_type; selects the parameter layout")
    hidden_size: StrictInt = Field(ge=8, le=65_536, examples=[4096])
    num_hidden_layers: StrictInt = Field(ge=1, le=1_024, examples=[32])
    num_attention_heads: StrictInt = Field(ge=1, le=1_024, examples=[32])
    num_key_value_heads: StrictInt | None = Field(None, ge=1, le=1_024, description="GQA key/value heads")
    head_dim: StrictInt | None = Field(None, ge=1, le=4_096)
    intermediate_size: StrictInt = Field(ge=1, le=1_048_576, examples=[11008])
    vocab_size: StrictInt = Field(ge=2, le=4_194_304, examples=[32000])
    tie_word_embeddings: StrictBool = False
    max_position_embeddings: StrictInt = Field(4096, ge=1, le=MAX_TOKENS)
    num_local_experts: StrictInt = Field(0, ge=0, le=1_024, description="MoE experts (0: dense)")
    num_experts_per_tok: StrictInt = Field(0, ge=0, le=1_024)

    _whole_numbers = field_validator("*", mode="before")(whole_number)


def _model_form(value: object) -> str:
    return "architecture" if isinstance(value, (dict, ArchConfig)) else "name"


# A model by name (catalog name, alias or, in the library and CLI, a local config path) or inline architecture:
# a JSON object is an architecture, anything else a name, so a bad value gets the one error of its form
ModelRef = Annotated[
    Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME), Tag("name")]
    | Annotated[ArchConfig, Tag("architecture")],
    Discriminator(_model_form),
]


class EstimateRequest(BaseModel):
    """One planned run: model, algorithm, cluster and the knobs users know from DeepSpeed-Chat, TRL, verl."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: ModelRef = Field(
        description="Actor (policy) model: catalog name or alias, or an inline architecture",
        examples=["meta-llama/Llama-2-7b-hf"],
    )
    algo: Algo = Field("ppo", description="RL (or SFT/DPO) algorithm", examples=["ppo"])
    gpus: str = Field(
        "1xA100-80GB", min_length=1, max_length=128,
        description="Cluster: 'N x GPU' ('8xA100-40GB') or 'nodes x gpus-per-node x GPU' ('2x8xH100-80GB')",
        examples=["8xA100-40GB"],
    )
    critic_model: ModelRef | None = Field(None, description="Critic architecture (PPO); default: the actor's")
    reward_model: ModelRef | None = Field(None, description="Reward model architecture; default: the actor's")
    reward: Literal["model", "rule"] | None = Field(
        None, description="'rule' drops the reward model (default: rule for GRPO, model otherwise)"
    )
    framework: Framework | None = Field(
        None, description="Fill every field not given with this framework's defaults: what memplan's reader "
        "of its launch files (memplan.frameworks: verl, trl, openrlhf, dschat) makes of a minimal launch file "
        "naming only the model, algorithm and GPUs (memplan.frameworks.presets); the fields given win. Unset: "
        "memplan's own defaults", examples=["verl"]
    )

    # sharding and placement
    engine: Engine = Field(
        "deepspeed", description="Training engine: DeepSpeed ZeRO, PyTorch FSDP (FSDP2, or FSDP1 with "
        "fsdp_version 1), or plain PyTorch (one GPU / DDP)"
    )
    zero_stage: StrictInt | None = Field(
        None, ge=0, le=3, description="ZeRO stage for every role (FSDP: 3 full, 2 grad-op, 0 none). Unset: "
        "auto_zero_stage — 3 (ZeRO-3 / FSDP full shard) for a full fine-tune over more than one data-parallel "
        "GPU, or with any CPU offload, under engine 'deepspeed' or 'fsdp': the setting that fits the most, which "
        "DeepSpeed and FSDP users launch for models that do not fit replicated (TRL's zero3.yaml, verl's "
        "reshard_after_forward); 0 on one GPU, with LoRA (a small adapter, the frozen base replicated as peft "
        "and TRL run it) and under engine 'torch', which does not shard"
    )
    actor_zero_stage: StrictInt | None = Field(None, ge=0, le=3)
    critic_zero_stage: StrictInt | None = Field(None, ge=0, le=3)
    ref_zero_stage: StrictInt | None = Field(None, ge=0, le=3)
    reward_zero_stage: StrictInt | None = Field(None, ge=0, le=3)
    hybrid_shard: StrictBool = Field(False, description="Shard within a node only (FSDP HYBRID_SHARD, ZeRO++ hpZ)")
    fsdp_version: Literal[1, 2] = Field(
        2, description="engine 'fsdp' only: 2 is FSDP2 (fully_shard, per-parameter DTensor shards; verl's strategy "
        "fsdp2), 1 is FSDP1 (FullyShardedDataParallel, one padded FlatParameter per wrapped decoder layer and the "
        "root; verl's strategy fsdp)"
    )
    offload: Offload = Field("none", description="CPU offload for trainable roles (actor, critic)")
    idle_offload: IdleOffload = Field(
        "none", description="verl's param_offload / optimizer_offload (engine 'fsdp'), OpenRLHF's ds.enable_sleep "
        "(engine 'deepspeed': 'optimizer' only), AgileRL's use_memory_efficient_params (engine 'torch': 'params' "
        "only, Module.to('cpu') while a colocated vLLM generates): the trained roles' weight shards and/or "
        "optimizer states wait on the CPU while their role is idle, and come back for its own forwards (weights) "
        "and updates (weights and optimizer states)"
    )
    offload_ref: StrictBool = Field(False, description="Reference parameters on the CPU (ZeRO-3 param offload)")
    offload_reward: StrictBool = Field(False, description="Reward model parameters on the CPU (ZeRO-3 param offload)")
    tp: StrictInt = Field(1, ge=1, le=512, description="Tensor-parallel degree")
    placement: Placement = Field("colocated", description="All roles on every GPU, or each role on its own GPUs")
    split_groups: tuple[tuple[Role, ...], ...] = Field(
        (), max_length=4, description="Under placement 'split': roles that share one GPU group, each its own "
        "process (OpenRLHF's colocate_actor_ref, colocate_critic_reward), e.g. [[actor, reference], [critic, "
        "reward]]; every other role keeps a group of its own"
    )

    # training knobs
    dtype: DType = Field("bf16", description="Weights and activations dtype (mixed precision keeps fp32 masters)")
    master_weights: StrictBool | None = Field(
        None, description="fp32 master weights and fp32 optimizer states under bf16/fp16 (DeepSpeed, FSDP "
        "MixedPrecision). False: pure low-precision training, states in the weights' dtype (torch AdamW on a bf16 "
        "model). Default: True for deepspeed and fsdp, False for torch"
    )
    optimizer: Optimizer = "adamw"
    optimizer_impl: OptimizerImpl = Field(
        "auto", description="AdamW kernel: 'foreach' allocates a parameter-sized temporary; auto = fused under "
        "DeepSpeed ZeRO, foreach under FSDP/DDP (torch's CUDA default)"
    )
    gradient_checkpointing: StrictBool = False
    attention: Attention = Field("sdpa", description="eager keeps b·a·s² fp32 scores per layer")
    logprob_kernel: LogprobKernel = Field(
        "log-softmax", description="Log-probs and cross-entropy: 'log-softmax' of the fp32-cast logits of the "
        "whole micro batch (the most a framework holds; memplan's tracer runs it); 'fused', a kernel that holds the "
        "16-bit logits only and writes their gradient in place (verl: flash-attn's cross-entropy; Liger); "
        "'fp32-fused', every position's logits cast to fp32 and flash-attn's cross-entropy with its fp32 gradient "
        "(OpenRLHF); 'chunked', an LM head that never holds the logits, projecting 4,096 × 32,768 tiles (TRL 1.16's "
        "fused LM head); 'row-chunked', an LM head over every position in tiles of logprob_chunk_rows rows × the "
        "whole vocabulary, recomputed in backward (AgileRL's fused_linear_logprobs_chunked)"
    )
    logprob_chunk_rows: StrictInt | None = Field(
        None, ge=1, le=1 << 20, description="Rows per tile of logprob_kernel 'row-chunked' (AgileRL's chunk_rows); "
        "default: a 256 MiB fp32 tile, 2^28 / (4 × vocabulary) rows clamped to [128, 4096] (AgileRL's auto-tune)"
    )
    lora_rank: StrictInt = Field(0, ge=0, le=65_536, description="LoRA rank (0: full fine-tuning)")
    lora_targets: LoraTargets = "all-linear"
    quantize_base: Quantization = Field("none", description="QLoRA: frozen base weights in int8/int4")
    ref: RefMode | None = Field(
        None, description="Reference model: separate copy, the LoRA-disabled actor, a second frozen LoRA adapter "
        "on the actor's base ('lora-adapter': AgileRL's use_separate_reference_adapter), or none (beta=0). "
        "Default: lora-shared with LoRA, none for SFT, separate otherwise"
    )

    # batch and lengths
    micro_batch_size: StrictInt = Field(1, ge=1, le=MAX_BATCH, description="Sequences per GPU per forward/backward")
    rollout_batch_size: StrictInt | None = Field(None, ge=1, le=MAX_BATCH, description="Prompts per GPU per generation")
    score_micro_batch_size: StrictInt | None = Field(
        None, ge=1, le=MAX_BATCH, description="Sequences per GPU per scoring forward (log-probs, rewards, values); "
        "default: micro_batch_size"
    )
    prompt_len: StrictInt = Field(256, ge=1, le=MAX_TOKENS)
    gen_len: StrictInt = Field(256, ge=1, le=MAX_TOKENS)
    seq_len: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS, description="SFT/DPO sequence length")
    group_size: StrictInt | None = Field(None, ge=1, le=4096, description="Completions per prompt (GRPO 8, RLOO 4)")
    gen_len_mean: StrictInt | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Expected mean answer length (at most gen_len; default gen_len): a "
        "packed micro batch holds sequences of prompt_len + gen_len_mean tokens; a padded one, HF generate's KV "
        "cache and vLLM's reservation do not depend on it"
    )
    packing: StrictBool = Field(
        False, description="Sequences packed without padding into one [1, tokens] row (verl's use_remove_padding, "
        "OpenRLHF's packing_samples, TRL's padding_free): a micro batch's activations and logits follow its tokens"
    )
    max_tokens_per_gpu: StrictInt | None = Field(
        None, ge=1, le=MAX_TOKENS * 64, description="Token cap of a training micro batch per GPU (verl's use_dynamic_bsz "
        "with ppo_max_token_len_per_gpu, OpenRLHF's train.max_tokens_per_gpu); needs packing. Replaces "
        "micro_batch_size: as many sequences as the cap holds (one longer sequence alone)"
    )
    score_max_tokens_per_gpu: StrictInt | None = Field(
        None, ge=1, le=MAX_TOKENS * 64, description="Token cap of a scoring forward per GPU (verl's "
        "log_prob_max_token_len_per_gpu, critic forward_max_token_len_per_gpu; OpenRLHF's rollout.max_tokens_per_gpu); "
        "needs packing; default: max_tokens_per_gpu"
    )
    sequence_parallel: StrictInt = Field(
        1, ge=1, le=256, description="Sequence-parallel size (verl's ulysses_sequence_parallel_size, OpenRLHF's "
        "ds.ring_attn_size): each micro batch's tokens split over this many GPUs, exchanged around attention as "
        "sequence_parallel_mode says; needs packing"
    )
    sequence_parallel_mode: Literal["ulysses", "ring"] = Field(
        "ulysses", description="How the sequence-parallel GPUs share attention: 'ulysses' — verl's all-to-all of "
        "heads; 'ring' — OpenRLHF's ring attention group (--ds.ring_attn_size: ring_flash_attn's llama3 varlen kernel "
        "all-gathers K/V over the group, ring_head_stride KV heads at a time)"
    )
    ring_head_stride: StrictInt = Field(
        1, ge=1, le=1024, description="KV heads per all-gather of ring attention (OpenRLHF's "
        "--ds.ring_attn_head_stride); must divide the model's key/value heads; used with sequence_parallel_mode 'ring'"
    )
    entropy: Literal["none", "scoring", "update", "scoring+update", "update-no-grad"] = Field(
        "none", description="Where the actor takes the entropy over the whole vocabulary: 'scoring' — its old "
        "log-prob forward, for metrics (verl, full fine-tuning); 'update' — in the loss (verl entropy_coeff ≠ 0, TRL "
        "entropy_coef ≠ 0, OpenRLHF entropy_coef set: in the autograd graph); 'update-no-grad' — in the update's "
        "forward without grad (TRL's top_entropy_quantile mask)"
    )
    entropy_kernel: Literal["compiled", "eager", "chunked", "fp32-chunked"] = Field(
        "compiled", description="How the entropy is taken: verl's entropy_from_logits under torch.compile "
        "(use_torch_compile, the default) or eager; TRL's entropy_from_logits in 128-row chunks ('chunked'); verl's "
        "entropy_from_logits_with_chunking, 2048 fp32 rows ('fp32-chunked')"
    )

    # rollout engine
    rollout_engine: RolloutEngine = Field(
        "hf", description="Generation: HF generate on the training GPUs, DeepSpeed-Chat's hybrid engine, colocated "
        "vLLM, or 'remote' — an inference server on other GPUs (TRL's vllm_mode='server', OpenRLHF's vLLM "
        "engines): the training GPUs only send it their weights"
    )
    vllm_gpu_memory_utilization: StrictFloat = Field(0.5, gt=0.0, le=1.0)
    gather_for_generation: StrictBool = Field(
        False, description="Under ZeRO-3 / FSDP, gather the whole actor to generate (rollout_engine 'hf') or to "
        "send its weights to vLLM or a remote engine, instead of one unit at a time (TRL's "
        "ds3_gather_for_generation, on by default; TRL syncs a PEFT actor under ZeRO-3 to vLLM whole)"
    )
    vllm_tensor_parallel_size: StrictInt = Field(
        1, ge=1, le=64, description="GPUs one colocated vLLM engine spreads its weights over (verl's "
        "rollout.tensor_model_parallel_size, 2 by default; TRL's and OpenRLHF's 1): its weights per GPU, woken "
        "alone for the weight sync in sleep mode"
    )
    inference_tp_size: StrictInt = Field(
        1, ge=1, le=64, description="DeepSpeed-Chat's --inference_tp_size (hybrid_engine.inference_tp_size): the "
        "hybrid engine generates with the actor's layers split over this many GPUs of a node (ZeRO-3 only), each "
        "GPU generating the whole group's prompts with 1/tp of every layer's weights"
    )
    tp_gather_partition_size: StrictInt = Field(
        8, ge=1, le=1024, description="DeepSpeed-Chat's --tp_gather_partition_size (hybrid_engine."
        "tp_gather_partition_size, 8): with inference_tp_size > 1, the layers gathered at once before each is "
        "sliced into its inference container"
    )
    weight_sync_bucket_mb: StrictInt = Field(
        0, ge=0, le=65_536, description="A buffer the trainer packs the actor's weights into to send them to vLLM "
        "or a remote engine (verl 0.9's checkpoint_engine.update_weights_bucket_megabytes, 2048 MiB); 0: one "
        "tensor at a time (TRL, OpenRLHF)"
    )
    vllm_sleep_mode: StrictBool = Field(
        True, description="Colocated vLLM frees its memory outside rollout (verl; TRL's vllm_enable_sleep_mode, "
        "off by default: then its reservation stays through scoring and training)"
    )
    vllm_sleep_level: Literal[1, 2] | None = Field(
        None, description="vLLM's sleep level in sleep mode: 1 keeps a copy of its weights in pinned host RAM "
        "(CuMemAllocator.sleep offloads the 'weights' tag), counted per GPU in host_bytes_per_node; 2 discards "
        "them (the trainer syncs them back). Unset: the framework's level — 1 under framework 'openrlhf' "
        "(vllm_engine.py: sleep(level=1)), else 2 (verl with vLLM ≥ 0.8.5: VLLM_SLEEP_LEVEL; TRL: "
        "llm.sleep(level=2))", examples=[1]
    )
    vllm_max_num_batched_tokens: StrictInt | None = Field(
        None, ge=1, le=MAX_TOKENS * 64, description="Colocated vLLM's max_num_batched_tokens: tokens of its "
        "start-up profile run, whose activations it sizes the KV cache around and then frees, and of its "
        "persistent input buffers (default 8192: vLLM's LLM class on GPUs under 70 GiB, verl's "
        "rollout.max_num_batched_tokens)"
    )

    # fixed costs and host
    cuda_context_bytes: StrictInt | None = Field(None, ge=0, le=1 << 40, description="Override the GPU's CUDA context")
    processes_per_gpu: StrictInt = Field(
        1, ge=1, le=16, description="Processes sharing each GPU, each with its own CUDA context, cuBLAS workspace "
        "and (multi-GPU) NCCL buffers: OpenRLHF's Ray actors under colocate_all, one per model and one per vLLM "
        "worker (verl, TRL and DeepSpeed-Chat run one process per GPU)"
    )
    host_ram_bytes_per_node: StrictInt = Field(1 << 40, ge=1, le=1 << 50, description="Host RAM per node (default 1 TiB)")

    _whole_numbers = field_validator("*", mode="before")(whole_number)

    @model_validator(mode="wrap")
    @classmethod
    def _defaults(cls, data: Any, handler: ModelWrapValidatorHandler[EstimateRequest]) -> EstimateRequest:
        """The defaults that depend on other fields: ``framework``'s preset under the fields given, then an unset
        ``zero_stage`` as ``auto_zero_stage`` says (kept out of ``model_fields_set``: still unset)."""
        request = handler(data)
        if request.framework is not None and isinstance(data, dict):
            from memplan.errors import InputError
            from memplan.frameworks.presets import preset_fields

            given = {k: v for k, v in data.items() if v is not None}
            try:
                preset = preset_fields(request, frozenset(given))
            except InputError as exc:  # a ValidationError naming the field, as pydantic's own
                message = str(exc).removeprefix(f"{exc.field}: ")
                raise ValidationError.from_exception_data(cls.__name__, [InitErrorDetails(
                    type=PydanticCustomError(type(exc).__name__, "{message}", {"message": message}), loc=(exc.field,),
                    input=exc.value)]) from None
            if preset.keys() - given.keys():
                request = handler({**preset, **given})
        if request.zero_stage is None:
            request.__dict__["zero_stage"] = auto_zero_stage(request)
        return request


def auto_zero_stage(request: EstimateRequest) -> int:
    """The ZeRO stage of a request that leaves ``zero_stage`` unset: 3 for a full fine-tune over more than one
    data-parallel GPU (GPUs ÷ tp) or with any CPU offload (DeepSpeed offloads from a ZeRO stage only), under
    engine 'deepspeed' or 'fsdp'; else 0 (one GPU, LoRA, engine 'torch'). A bad ``gpus`` gives 0: the estimate
    names it."""
    if request.engine == "torch":
        return 0
    if request.offload != "none" or request.offload_ref or request.offload_reward:
        return 3
    if request.lora_rank:
        return 0
    from memplan.catalog import parse_cluster
    from memplan.errors import InputError

    try:
        gpus = parse_cluster(request.gpus).num_gpus
    except InputError:
        return 0
    return 3 if gpus // request.tp > 1 else 0


def on_cluster(request: EstimateRequest, gpus: str) -> EstimateRequest:
    """``request`` on the cluster ``gpus`` (a planner's GPU-count search): a ``zero_stage`` left unset follows
    the count up (``auto_zero_stage``: 0 on one GPU, 3 on eight) and stays unset; never down, since the
    planner's later changes to the moved request (an offload) may need the stage it had."""
    moved = request.model_copy(update={"gpus": gpus})
    if "zero_stage" not in request.model_fields_set:
        moved.__dict__["zero_stage"] = max(request.zero_stage or 0, auto_zero_stage(moved))
    return moved


class Breakdown(BaseModel):
    """Bytes by PyTorch's memory categories (torch ``_MemRefType``) plus KV cache and logits."""

    model_config = ConfigDict(frozen=True)

    parameter: int = 0
    buffer: int = 0
    gradient: int = 0
    optstate: int = 0
    activation: int = 0
    temp: int = 0
    kv_cache: int = 0
    logits: int = 0
    other: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return (
            self.parameter + self.buffer + self.gradient + self.optstate + self.activation
            + self.temp + self.kv_cache + self.logits + self.other
        )


class LineItem(BaseModel):
    """One term of a phase: which role, which category, how many bytes per GPU, and why."""

    model_config = ConfigDict(frozen=True)

    role: str
    category: str
    bytes: int
    note: str = ""


class PhaseReport(BaseModel):
    """One phase: resident memory (``Report.resident_items``) plus this phase's own transient items.

    ``total_bytes == resident_bytes + sum(item.bytes for item in items) == breakdown.total``.
    """

    model_config = ConfigDict(frozen=True)

    phase: Phase
    total_bytes: int
    breakdown: Breakdown = Field(description="Resident and transient bytes of this phase by category")
    resident_bytes: int = Field(description="Resident models, engine buffers and fixed costs")
    activity: str = Field(description="The step of the phase whose transients set its peak")
    items: tuple[LineItem, ...] = Field(description="This phase's transient terms (its largest activity)")
    group: str | None = Field(None, description="Split placement: the role (or roles, joined by '+') whose GPUs "
                              "set this phase's peak")
    tokens: str = Field("", description="The tokens per GPU this phase's largest step assumed, and which "
                        "lengths (mean or max) gave them")


class ModelReport(BaseModel):
    """One resident model: its role and its per-GPU bytes outside any phase's transients."""

    model_config = ConfigDict(frozen=True)

    role: Role
    name: str
    num_params: int
    trainable_params: int
    trainable: bool
    zero_stage: int
    gpus: int = Field(description="GPUs this role is spread over")
    resident: Breakdown = Field(description="Per-GPU bytes kept between phases")
    host_bytes: int = Field(description="Bytes this role keeps in host RAM per GPU (CPU offload)")
    shares_weights_with: str | None = None


class PhaseBand(BaseModel):
    """Where one phase's total per GPU has fallen on real GPUs around memplan's estimate of it: memplan's error
    band (``memplan.estimator.band``, from the corpus' residuals; never added to the estimate)."""

    model_config = ConfigDict(frozen=True)

    phase: Phase
    low_bytes: int = Field(description="total_bytes × (1 + lower), truncated to whole bytes, + lower_bytes")
    high_bytes: int = Field(description="total_bytes × (1 + upper), truncated to whole bytes, + upper_bytes")
    lower: float = Field(description="Low quantile of measured − estimated over the corpus: its part relative to "
                         "the estimate (a fraction of it)")
    upper: float = Field(description="High quantile of measured − estimated over the corpus: its relative part")
    lower_bytes: int = Field(0, description="Low quantile of measured − estimated over the corpus: its part in "
                             "bytes (the band file's form per phase kind: relative, bytes, or both)")
    upper_bytes: int = Field(0, description="High quantile of measured − estimated over the corpus: its part in "
                             "bytes")
    basis: str = Field(description="'rollout' or 'training': the corpus points of that phase kind; "
                       "'extrapolated (…): …': where the corpus has no points like this run, the lowest low end "
                       "measured and the phase kind's high end")


class Report(BaseModel):
    """What memplan answers: the peak per GPU, where it goes, and whether it fits.

    Immutable all the way down (frozen models, tuples): the estimator hands the same report to every caller
    of the same request.
    """

    model_config = ConfigDict(frozen=True)

    request: EstimateRequest
    gpu: str
    num_gpus: int
    fits: bool = Field(description="The run can start and fits: GPU memory (gpu_fits), host RAM (host_fits) and "
                       "colocated vLLM's KV cache; reasons says which failed. The point estimate's verdict: "
                       "a TIGHT run may have either (see verdict)")
    verdict: Verdict = Field(description="The verdict with memplan's error band: 'fits' — every check passes "
                             "and the peak's band (peak_band_bytes) ends within capacity; 'does_not_fit' — host "
                             "RAM or vLLM fail, or the peak and its band's low end are both over capacity; "
                             "'tight' — otherwise: the peak lies within memplan's error band of capacity, memplan "
                             "cannot say (the planner skips it unless allow_tight). fits is true for every "
                             "'fits', false for every 'does_not_fit'")
    gpu_fits: bool = Field(description="The peak per GPU is within the GPU's memory")
    reasons: tuple[str, ...] = Field(description="Why the verdict is not 'fits', one per failed check (a TIGHT "
                                     "run's starts 'tight:'); empty when it is")
    peak_bytes_per_gpu: int
    peak_band_bytes: tuple[int, int] = Field(description="Where the real peak per GPU may lie (low, high): the "
                                             "largest low end and the largest high end over phase_bands")
    capacity_bytes: int
    headroom_bytes: int
    peak_phase: Phase
    fixed_bytes: int = Field(description="CUDA context, cuBLAS workspace, NCCL buffers: in every phase")
    resident_items: tuple[LineItem, ...] = Field(description="Terms present in every phase: fixed costs, weights, "
                                           "optimizer states, engine buffers")
    phases: tuple[PhaseReport, ...]
    phase_bands: tuple[PhaseBand, ...] = Field(description="Each phase's error band, in the order of phases")
    models: tuple[ModelReport, ...]
    deciding_terms: tuple[LineItem, ...] = Field(description="Largest terms of the peak phase, largest first")
    host_bytes_per_node: int
    host_fits: bool
    notes: tuple[str, ...] = Field((), description="Assumptions and warnings")


def trusted(cls: type[M], fields: dict, fields_set: set[str] | None = None) -> M:
    """A report model from values the estimator computed itself, without validating them again.

    ``fields`` holds every field, in declaration order, already of its declared type (ints, strs, tuples and
    models of this module); it becomes the instance's ``__dict__``. ``fields_set`` defaults to all of them,
    as when a dict with every key is validated (one set per class, shared: the models are frozen, and pydantic
    copies the set before any change, as in ``model_copy``). This is what pydantic's ``model_construct`` returns
    with every field given, without its per-field bookkeeping (tests/test_estimator_speed_invariants.py checks
    that re-validating a report changes nothing). Only for frozen models without validators, extras or
    private attributes.
    """
    obj = _new(cls)
    _set_dict(obj, fields)
    _set_fields_set(obj, _all_fields(cls) if fields_set is None else fields_set)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


_set_dict = BaseModel.__dict__["__dict__"].__set__  # BaseModel's slots, set through their descriptors
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_ALL_FIELDS: dict[type, set[str]] = {}


def _all_fields(cls: type[BaseModel]) -> set[str]:
    names = _ALL_FIELDS.get(cls)
    if names is None:
        names = _ALL_FIELDS[cls] = set(cls.model_fields)
    return names
