"""Resolved model architecture: the shape facts the memory model needs and exact parameter counts.

Shape letters used across memplan (Korthikanti et al. 2022, arXiv 2205.05198):

    b  micro-batch size (sequences)        s  sequence length (tokens)
    h  hidden size                         a  attention heads
    k  key/value heads (GQA)               d  head dimension
    L  decoder layers                      V  vocabulary size
    f  MLP intermediate size (per expert for MoE)

A ``ModelSpec`` is built from a config.json dictionary by ``spec_from_config`` in pure Python (no torch,
no transformers); its parameter counts equal what transformers builds from the same config on the meta
device (checked for every catalog entry in tests/test_specs.py).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from memplan.errors import EnvironmentProblem, InputError

if TYPE_CHECKING:
    from memplan.report import ArchConfig

T = TypeVar("T")


def hashed_once(cls: type[T]) -> type[T]:
    """Class decorator (above ``@dataclass(frozen=True, slots=True)``) for the estimator's cache keys: the hash of
    the compared fields is taken once, after ``__init__``, into the class's ``hash_`` field — hashing ~20 fields
    on every cache look-up costs µs. Unpickling derives again (the class's ``__post_init__``) and hashes again,
    as another process hashes strings differently."""
    compared = tuple(f.name for f in fields(cls) if f.compare)
    names = tuple(f.name for f in fields(cls))
    init, post_init = cls.__init__, getattr(cls, "__post_init__", None)

    def rehash(self: T) -> None:
        object.__setattr__(self, "hash_", hash(tuple(getattr(self, name) for name in compared)))

    @functools.wraps(init)
    def __init__(self: T, *args, **kwargs) -> None:  # noqa: N807, ANN002, ANN003
        init(self, *args, **kwargs)
        rehash(self)

    def __setstate__(self: T, state: list) -> None:  # noqa: N807
        for name, value in zip(names, state):
            object.__setattr__(self, name, value)
        if post_init is not None:
            post_init(self)
        rehash(self)

    def __hash__(self: T) -> int:  # noqa: N807
        return self.hash_  # type: ignore[attr-defined]

    cls.__init__, cls.__setstate__, cls.__hash__ = __init__, __setstate__, __hash__  # type: ignore[method-assign]
    return cls


@dataclass(frozen=True, kw_only=True, slots=True)
class Linear:
    """One linear layer inside a decoder layer, as LoRA sees it: ``count`` copies of an in×out matrix."""

    name: str
    """Module name as in transformers (``q_proj``, ``gate_proj``, ``fc1``, ``query_key_value`` …)."""
    in_features: int
    out_features: int
    count: int = 1
    """How many copies per layer (the number of experts for MoE expert matrices)."""
    attention: bool = False
    """True for attention projections (LoRA ``attention`` target set)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerGroup:
    """Decoder layers of one shape, for a model whose layers differ (Gemma-4: sliding and full-attention layers
    with different head dims, layers that reuse an earlier layer's keys and values, double-wide MLPs).
    transformers 5.25 ``models/gemma4/modeling_gemma4.py``: ``Gemma4TextAttention.__init__`` (head_dim and KV heads
    from ``config.per_layer_config``, no k/v projections when ``is_kv_shared_layer``), ``Gemma4TextMLP.__init__``
    (``intermediate_size * 2`` on KV-shared layers when ``use_double_wide_mlp``)."""

    count: int
    """Layers of this shape."""
    head_dim: int
    num_kv_heads: int
    intermediate_size: int
    kv_source: bool
    """The layers compute their own keys and values (and cache them); False: they reuse an earlier layer's
    (``kv_sharing_modes`` 'reuse'), holding no k/v projections and no cache of their own."""
    sliding_window: int
    """Tokens a sliding-attention layer attends to (and caches); 0 for full attention."""
    params: int
    """Parameters of one such layer."""
    linears: tuple[Linear, ...]
    """Its attention and MLP projections (the ones LoRA adapts)."""


@hashed_once
@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """Architecture of one causal LM, resolved from its config.json."""

    name: str
    """Catalog name (HF ``org/name``) or the path the config was read from."""
    model_type: str
    """transformers ``model_type`` (llama, qwen2, opt, gpt_neox, mixtral, gpt2 …)."""
    hidden_size: int
    """h."""
    num_layers: int
    """L."""
    num_heads: int
    """a."""
    num_kv_heads: int
    """k (equals a without GQA)."""
    head_dim: int
    """d."""
    intermediate_size: int
    """f: MLP width (per expert for MoE)."""
    vocab_size: int
    """V."""
    gated_mlp: bool
    """SwiGLU/GeGLU (gate, up, down) rather than a plain two-matrix MLP."""
    num_experts: int = 0
    """Routed experts per MoE layer; 0 for dense models."""
    experts_per_token: int = 0
    """Top-k experts each token visits (MoE)."""
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 0
    num_params: int
    """Exact parameter count of the ``AutoModelForCausalLM`` transformers builds (LM head included)."""
    embedding_params: int
    """Input embedding parameters (token and learned position embeddings, projections)."""
    lm_head_params: int
    """Separate LM head parameters; 0 when tied to the input embedding."""
    layer_params: int
    """Parameters of one decoder layer."""
    linears: tuple[Linear, ...] = ()
    """The linear layers of one decoder layer (for LoRA adapter sizes)."""
    layer_groups: tuple[LayerGroup, ...] = ()
    """Layers of different shapes (Gemma-4), their counts summing to ``num_layers``; empty when every layer is
    alike. The uniform fields then describe the largest layer's shape (the peak of one layer's work),
    ``layer_params`` the mean layer (``decoder_params // L``), and the estimator sums per-layer quantities over the
    groups (``layer_views``)."""
    layer_group: LayerGroup | None = None
    """Set on the per-group views ``layer_views`` returns: the group this spec stands for."""
    per_layer_input_size: int = 0
    """Gemma-4's per-layer embeddings (PLE): the width each layer's input gate takes
    (``hidden_size_per_layer_input``); 0 without."""
    # Derived once at construction (not compared, not given): the estimator reads them on every request.
    largest_matrix: int = field(init=False, repr=False, compare=False)
    """Elements of the largest single weight: the embedding, the LM head or one of a layer's linears (all
    experts of an MoE matrix together)."""
    largest_unit: int = field(init=False, repr=False, compare=False)
    """Parameters of the largest of a decoder layer, the embedding and the LM head."""
    hash_: int = field(init=False, repr=False, compare=False)
    """``hash`` of the compared fields (``hashed_once``): specs key the estimator's caches."""

    def __post_init__(self) -> None:
        matrices = [lin.count * lin.in_features * lin.out_features for lin in self.linears]
        object.__setattr__(self, "largest_matrix", max([self.embedding_params, self.lm_head_params, *matrices]))
        object.__setattr__(self, "largest_unit", max(self.layer_params, self.embedding_params, self.lm_head_params))

    @property
    def decoder_params(self) -> int:
        """Parameters of all decoder layers together."""
        if self.layer_groups:
            return sum(g.count * g.params for g in self.layer_groups)
        return self.num_layers * self.layer_params

    @property
    def backbone_params(self) -> int:
        """Parameters without the LM head: what a reward model or critic keeps before its scalar head."""
        return self.num_params - self.lm_head_params


@functools.lru_cache(maxsize=256)
def layer_views(spec: ModelSpec) -> tuple[ModelSpec, ...]:
    """One spec per layer group (``spec.layer_groups``), each a uniform model of ``group.count`` layers of that
    group's shape (``layer_group`` set), so a per-layer formula applied to each view and summed gives the whole
    model's; ``(spec,)`` when every layer is alike."""
    if not spec.layer_groups:
        return (spec,)
    return tuple(
        replace(spec, num_layers=g.count, head_dim=g.head_dim, num_kv_heads=g.num_kv_heads,
                intermediate_size=g.intermediate_size, layer_params=g.params, linears=g.linears, layer_groups=(),
                layer_group=g)
        for g in spec.layer_groups
    )


# --------------------------------------------------------------------------------------------------
# Building a ModelSpec from a config.json dictionary (pure Python).
#
# Each family's parameter layout mirrors the transformers module that AutoModelForCausalLM builds:
#   llama/mistral/qwen2/qwen3/gemma/gemma2/gemma3_text/phi3/mixtral/qwen2_moe/qwen3_moe/olmoe (modeling_<type>.py)
#   gemma3 (Gemma3ForConditionalGeneration: gemma3_text decoder + SigLIP vision tower + projector),
#   opt (OPTDecoder), gpt_neox (GPTNeoXModel + untied lm_head), gpt2 (Conv1D blocks, tied head).
# Absent optional keys take the default of transformers' config class for that family.
# --------------------------------------------------------------------------------------------------

_LLAMA_LIKE = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe",
    "olmoe",
)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(
    (*_LLAMA_LIKE, "gemma3", "gemma4", "gemma4_text", "opt", "gpt_neox", "gpt2")))

# transformers' config-class defaults that change the parameter layout when a key is absent
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text", "opt", "gpt2"}
_DEFAULT_HEAD_DIM = {"qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}
# Gemma3TextConfig and OlmoeConfig (transformers 5.25) give every shape a default: Gemma-3's published
# multimodal configs leave the text model's vocabulary, heads and head_dim to them.
_DEFAULTS = {
    "gemma3_text": {"vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "max_position_embeddings": 131_072},
    "olmoe": {"vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 2048, "num_hidden_layers": 16,
              "num_attention_heads": 16, "num_experts": 64, "num_experts_per_tok": 8, "max_position_embeddings": 4096},
}
# SiglipVisionConfig's defaults (Gemma-3's vision tower, built by AutoModel from ``vision_config``)
_SIGLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "num_channels": 3, "image_size": 224, "patch_size": 16}
_DEFAULT_MAX_POSITIONS = {"opt": 2048, "gpt2": 1024, "gpt_neox": 2048}


def _read_int(config: dict, *keys: str, default: int | None = None, minimum: int = 1) -> int:
    """The first of ``keys`` present (and not None) in ``config`` as an int >= minimum; InputError otherwise."""
    for key in keys:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InputError(key, f"must be an integer >= {minimum}, got {value!r}", value)
        return value
    if default is not None:
        return default
    raise InputError(keys[0], "missing from the model config", None)


def _read_bool(config: dict, key: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputError(key, f"must be true or false, got {value!r}", value)
    return value


def _linear_params(lin: Linear, bias: bool) -> int:
    return lin.count * (lin.in_features * lin.out_features + (lin.out_features if bias else 0))


def spec_from_config(config: dict, name: str) -> ModelSpec:
    """Resolve a config.json dictionary (or ``PretrainedConfig.to_dict()``) into a ``ModelSpec``.

    Parameter counts are exact: they equal ``sum(p.numel() for p in model.parameters())`` of the model
    ``AutoModelForCausalLM.from_config`` builds (tied weights counted once). Raises ``InputError`` naming
    the config field when a field is missing or invalid, or the model type is not supported.
    """
    if not isinstance(config, dict):
        raise InputError("model", f"config must be a JSON object, got {type(config).__name__}", None)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            "model_type", f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
            model_type,
        )
    if model_type == "gemma3":
        return _gemma3(config, name)
    if model_type in ("gemma4", "gemma4_text"):  # its own module: layout, towers and defaults run long
        return specs_gemma4.gemma4_spec(config, name)
    if model_type in _LLAMA_LIKE:
        return _llama_like(config, name, model_type)
    return {"opt": _opt, "gpt_neox": _gpt_neox, "gpt2": _gpt2}[model_type](config, name)


def _heads(config: dict, model_type: str, h: int) -> tuple[int, int, int]:
    """(a, k, d): attention heads, key/value heads, head dimension."""
    a = _read_int(config, "num_attention_heads", "n_head")
    k = _read_int(config, "num_key_value_heads", default=a)
    if a % k:
        raise InputError("num_key_value_heads", f"{k} must divide num_attention_heads ({a})", k)
    d = config.get("head_dim")
    if d is None:
        d = _DEFAULT_HEAD_DIM.get(model_type)
    if d is None:
        if h % a:
            raise InputError("num_attention_heads", f"{a} must divide hidden_size ({h})", a)
        d = h // a
    d = _read_int({"head_dim": d}, "head_dim")
    return a, k, d


def _llama_like(config: dict, name: str, model_type: str) -> ModelSpec:
    if model_type in _DEFAULTS:  # absent (or null) keys take the config class's defaults
        config = {**_DEFAULTS[model_type], **{k: v for k, v in config.items() if v is not None}}
    h = _read_int(config, "hidden_size")
    L = _read_int(config, "num_hidden_layers")
    V = _read_int(config, "vocab_size")
    a, k, d = _heads(config, model_type, h)
    tied = _read_bool(config, "tie_word_embeddings", model_type in _TIED_BY_DEFAULT)

    # attention projections and their biases
    if model_type == "phi3":
        attn = [Linear(name="qkv_proj", in_features=h, out_features=(a + 2 * k) * d, attention=True)]
    else:
        attn = [
            Linear(name="q_proj", in_features=h, out_features=a * d, attention=True),
            Linear(name="k_proj", in_features=h, out_features=k * d, attention=True),
            Linear(name="v_proj", in_features=h, out_features=k * d, attention=True),
        ]
    attn.append(Linear(name="o_proj", in_features=a * d, out_features=h, attention=True))
    if model_type == "qwen2":
        attn_bias = [True, True, True, False]
    elif model_type == "qwen2_moe":
        qkv = _read_bool(config, "qkv_bias", True)
        attn_bias = [qkv, qkv, qkv, False]
    elif model_type in ("llama", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "olmoe"):
        attn_bias = [_read_bool(config, "attention_bias", False)] * len(attn)
    else:
        attn_bias = [False] * len(attn)
    layer = sum(_linear_params(lin, b) for lin, b in zip(attn, attn_bias))
    if model_type in ("qwen3", "qwen3_moe", "gemma3_text"):
        layer += 2 * d  # q_norm, k_norm over the head dimension
    elif model_type == "olmoe":
        layer += h + (h // a) * k  # q_norm over all query heads, k_norm over the key heads (h/a wide each)
    layer += (4 if model_type in ("gemma2", "gemma3_text") else 2) * h  # RMSNorms (gemma2/3: pre/post attn and MLP)

    # MLP: dense gated, or routed experts
    num_experts = top_k = 0
    mlp: list[Linear]
    if model_type == "mixtral":
        f = _read_int(config, "intermediate_size")
        num_experts = _read_int(config, "num_local_experts", "num_experts")
        top_k = _read_int(config, "num_experts_per_tok")
        mlp = [
            Linear(name="gate", in_features=h, out_features=num_experts),  # router
            Linear(name="w1", in_features=h, out_features=f, count=num_experts),
            Linear(name="w3", in_features=h, out_features=f, count=num_experts),
            Linear(name="w2", in_features=f, out_features=h, count=num_experts),
        ]
    elif model_type in ("olmoe", "qwen2_moe", "qwen3_moe"):  # every layer routed: top-k of SwiGLU experts
        if config.get("mlp_only_layers") or _read_int(config, "decoder_sparse_step", default=1) != 1:
            raise InputError("mlp_only_layers", "MoE models with dense layers in between are not supported", None)
        # OLMoE's experts are intermediate_size wide (it has no shared expert); Qwen's moe_intermediate_size
        f = _read_int(config, "intermediate_size" if model_type == "olmoe" else "moe_intermediate_size")
        num_experts = _read_int(config, "num_experts", "num_local_experts")
        top_k = _read_int(config, "num_experts_per_tok")
        mlp = [
            Linear(name="gate", in_features=h, out_features=num_experts),  # router
            Linear(name="gate_proj", in_features=h, out_features=f, count=num_experts),
            Linear(name="up_proj", in_features=h, out_features=f, count=num_experts),
            Linear(name="down_proj", in_features=f, out_features=h, count=num_experts),
        ]
        if model_type == "qwen2_moe":
            fs = _read_int(config, "shared_expert_intermediate_size")
            mlp += [
                Linear(name="shared_expert.gate_proj", in_features=h, out_features=fs),
                Linear(name="shared_expert.up_proj", in_features=h, out_features=fs),
                Linear(name="shared_expert.down_proj", in_features=fs, out_features=h),
                Linear(name="shared_expert_gate", in_features=h, out_features=1),
            ]
    elif model_type == "phi3":
        f = _read_int(config, "intermediate_size")
        mlp = [
            Linear(name="gate_up_proj", in_features=h, out_features=2 * f),
            Linear(name="down_proj", in_features=f, out_features=h),
        ]
    else:
        f = _read_int(config, "intermediate_size")
        mlp = [
            Linear(name="gate_proj", in_features=h, out_features=f),
            Linear(name="up_proj", in_features=h, out_features=f),
            Linear(name="down_proj", in_features=f, out_features=h),
        ]
    mlp_bias = model_type == "llama" and _read_bool(config, "mlp_bias", False)
    layer += sum(_linear_params(lin, mlp_bias) for lin in mlp)

    embedding = V * h
    lm_head = 0 if tied else V * h
    return ModelSpec(
        name=name, model_type=model_type, hidden_size=h, num_layers=L, num_heads=a, num_kv_heads=k, head_dim=d,
        intermediate_size=f, vocab_size=V, gated_mlp=True, num_experts=num_experts, experts_per_token=top_k,
        tie_word_embeddings=tied,
        max_position_embeddings=_read_int(config, "max_position_embeddings", default=0, minimum=0),
        num_params=embedding + L * layer + h + lm_head,  # + final RMSNorm
        embedding_params=embedding, lm_head_params=lm_head, layer_params=layer, linears=tuple(attn + mlp),
    )


def _gemma3(config: dict, name: str) -> ModelSpec:
    """Gemma-3 as published (4B, 12B, 27B): ``Gemma3ForConditionalGeneration``, which AutoModelForCausalLM
    builds for model_type 'gemma3' — the text decoder of ``text_config`` plus a SigLIP vision tower
    (``vision_config``) and the multimodal projector. The decoder's shapes describe the model; the tower's
    and projector's weights count in ``num_params`` outside the decoder layers (resident, like the embedding).
    The top-level ``tie_word_embeddings`` (default true) ties the LM head."""
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
    for key, sub in (("text_config", text), ("vision_config", vision)):
        if not isinstance(sub, dict):
            raise InputError(key, f"must be a JSON object, got {type(sub).__name__}", None)
    tied = _read_bool(config, "tie_word_embeddings", True)
    spec = _llama_like({**text, "tie_word_embeddings": tied}, name, "gemma3_text")
    vision = {**_SIGLIP_DEFAULTS, **{k: v for k, v in vision.items() if v is not None}}
    vh = _read_int(vision, "hidden_size")
    projector = vh * spec.hidden_size + vh  # mm_input_projection_weight, mm_soft_emb_norm
    return replace(spec, model_type="gemma3", num_params=spec.num_params + _siglip_vision_params(vision) + projector)


def _siglip_vision_params(vision: dict) -> int:
    """Parameters of transformers' ``SiglipVisionModel`` for a vision_config (defaults already applied): patch
    convolution and learned positions, L encoder layers (LayerNorms, biased attention and GELU MLP), the final
    LayerNorm, and the attention-pooling head when ``vision_use_head`` (SiglipVisionConfig's default: true)."""
    h, f = _read_int(vision, "hidden_size"), _read_int(vision, "intermediate_size")
    L, channels = _read_int(vision, "num_hidden_layers"), _read_int(vision, "num_channels")
    image, patch = _read_int(vision, "image_size"), _read_int(vision, "patch_size")
    _read_int(vision, "num_attention_heads")  # validated only: heads split h without changing the count
    embeddings = channels * patch * patch * h + h + (image // patch) ** 2 * h
    mlp = (h * f + f) + (f * h + h)
    layer = 4 * (h * h + h) + mlp + 2 * 2 * h
    head = h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + mlp if _read_bool(vision, "vision_use_head", True) else 0
    return embeddings + L * layer + 2 * h + head


def _opt(config: dict, name: str) -> ModelSpec:
    h = _read_int(config, "hidden_size")
    L = _read_int(config, "num_hidden_layers")
    V = _read_int(config, "vocab_size")
    f = _read_int(config, "ffn_dim", "intermediate_size")
    a, _, d = _heads({k: v for k, v in config.items() if k not in ("num_key_value_heads", "head_dim")}, "opt", h)
    wp = _read_int(config, "word_embed_proj_dim", default=h)
    P = _read_int(config, "max_position_embeddings", default=_DEFAULT_MAX_POSITIONS["opt"])
    bias = _read_bool(config, "enable_bias", True)
    ln = 2 * h if _read_bool(config, "layer_norm_elementwise_affine", True) else 0
    tied = _read_bool(config, "tie_word_embeddings", True)
    final_ln = _read_bool(config, "do_layer_norm_before", True) and not _read_bool(
        config, "_remove_final_layer_norm", False
    )
    linears = (
        Linear(name="q_proj", in_features=h, out_features=h, attention=True),
        Linear(name="k_proj", in_features=h, out_features=h, attention=True),
        Linear(name="v_proj", in_features=h, out_features=h, attention=True),
        Linear(name="out_proj", in_features=h, out_features=h, attention=True),
        Linear(name="fc1", in_features=h, out_features=f),
        Linear(name="fc2", in_features=f, out_features=h),
    )
    layer = sum(_linear_params(lin, bias) for lin in linears) + 2 * ln
    # token embeddings (V×wp), learned positions with OPT's offset of 2, project_in/out when wp != h
    embedding = V * wp + (P + 2) * h + (2 * wp * h if wp != h else 0)
    lm_head = 0 if tied else V * wp
    return ModelSpec(
        name=name, model_type="opt", hidden_size=h, num_layers=L, num_heads=a, num_kv_heads=a, head_dim=d,
        intermediate_size=f, vocab_size=V, gated_mlp=False, tie_word_embeddings=tied, max_position_embeddings=P,
        num_params=embedding + L * layer + (ln if final_ln else 0) + lm_head,
        embedding_params=embedding, lm_head_params=lm_head, layer_params=layer, linears=linears,
    )


def _gpt_neox(config: dict, name: str) -> ModelSpec:
    h = _read_int(config, "hidden_size")
    L = _read_int(config, "num_hidden_layers")
    V = _read_int(config, "vocab_size")
    f = _read_int(config, "intermediate_size")
    a, _, d = _heads({k: v for k, v in config.items() if k not in ("num_key_value_heads", "head_dim")}, "gpt_neox", h)
    attn_bias = _read_bool(config, "attention_bias", True)
    tied = _read_bool(config, "tie_word_embeddings", False)
    attn = (
        Linear(name="query_key_value", in_features=h, out_features=3 * h, attention=True),
        Linear(name="dense", in_features=h, out_features=h, attention=True),
    )
    mlp = (
        Linear(name="dense_h_to_4h", in_features=h, out_features=f),
        Linear(name="dense_4h_to_h", in_features=f, out_features=h),
    )
    layer = sum(_linear_params(lin, attn_bias) for lin in attn) + sum(_linear_params(lin, True) for lin in mlp)
    layer += 2 * 2 * h  # input_layernorm, post_attention_layernorm (weight + bias)
    embedding = V * h
    lm_head = 0 if tied else V * h
    return ModelSpec(
        name=name, model_type="gpt_neox", hidden_size=h, num_layers=L, num_heads=a, num_kv_heads=a, head_dim=d,
        intermediate_size=f, vocab_size=V, gated_mlp=False, tie_word_embeddings=tied,
        max_position_embeddings=_read_int(config, "max_position_embeddings", default=2048),
        num_params=embedding + L * layer + 2 * h + lm_head,  # + final_layer_norm
        embedding_params=embedding, lm_head_params=lm_head, layer_params=layer, linears=attn + mlp,
    )


def _gpt2(config: dict, name: str) -> ModelSpec:
    h = _read_int(config, "n_embd", "hidden_size")
    L = _read_int(config, "n_layer", "num_hidden_layers")
    V = _read_int(config, "vocab_size")
    f = _read_int(config, "n_inner", "intermediate_size", default=4 * h)
    a, _, d = _heads({"num_attention_heads": config.get("n_head", config.get("num_attention_heads"))}, "gpt2", h)
    P = _read_int(config, "n_positions", "max_position_embeddings", default=_DEFAULT_MAX_POSITIONS["gpt2"])
    if _read_bool(config, "add_cross_attention", False):
        raise InputError("add_cross_attention", "GPT-2 with cross-attention is not a causal LM memplan plans", True)
    tied = _read_bool(config, "tie_word_embeddings", True)
    linears = (  # Conv1D layers (weights stored in×out), all with bias
        Linear(name="c_attn", in_features=h, out_features=3 * h, attention=True),
        Linear(name="attn.c_proj", in_features=h, out_features=h, attention=True),
        Linear(name="c_fc", in_features=h, out_features=f),
        Linear(name="mlp.c_proj", in_features=f, out_features=h),
    )
    layer = sum(_linear_params(lin, True) for lin in linears) + 2 * 2 * h  # ln_1, ln_2
    embedding = V * h + P * h  # wte + wpe
    lm_head = 0 if tied else V * h
    return ModelSpec(
        name=name, model_type="gpt2", hidden_size=h, num_layers=L, num_heads=a, num_kv_heads=a, head_dim=d,
        intermediate_size=f, vocab_size=V, gated_mlp=False, tie_word_embeddings=tied, max_position_embeddings=P,
        num_params=embedding + L * layer + 2 * h + lm_head,  # + ln_f
        embedding_params=embedding, lm_head_params=lm_head, layer_params=layer, linears=linears,
    )


def spec_from_arch(arch: ArchConfig, name: str = "inline") -> ModelSpec:
    """Resolve an inline ``ArchConfig`` (API, tests). Unset GQA heads mean ``a``; unset head_dim means ``h/a``."""
    config = arch.model_dump()
    if config["num_key_value_heads"] is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    if config["head_dim"] is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    for key in ("tie_word_embeddings", "max_position_embeddings"):
        if key not in arch.model_fields_set:  # let the family's own default apply (gpt2, opt, gemma are tied)
            del config[key]
    experts = config.pop("num_local_experts")
    top_k = config.pop("num_experts_per_tok")
    if config["model_type"] == "mixtral":
        config["num_local_experts"], config["num_experts_per_tok"] = experts, top_k
    elif experts:
        raise InputError("num_local_experts", "experts need model_type 'mixtral'", experts)
    return spec_from_config(config, name)


MAX_CONFIG_BYTES = 1 << 20


def spec_from_path(path: str | Path) -> ModelSpec:
    """Read a local config.json (file, or a model folder holding one) with transformers' config classes."""
    path = Path(path).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError("model", f"no config.json at {str(path)!r}", str(path))
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:  # a config.json is a few KB
            raise InputError("model", f"{str(file)!r} is over {MAX_CONFIG_BYTES >> 20} MiB: not a config.json", str(path))
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError("model", f"cannot read {str(file)!r} as JSON: {exc}", str(path)) from exc
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            "model", f"{str(file)!r} has model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
            str(path),
        )
    try:
        from transformers import AutoConfig
    except ImportError as exc:
        raise EnvironmentProblem(
            "reading a config.json from disk needs transformers: pip install 'memplan[hf]'"
        ) from exc
    try:
        if path.is_dir():
            hf_config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        else:
            fields = {k: v for k, v in raw.items() if k != "model_type"}
            hf_config = AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise InputError("model", f"transformers cannot read {str(file)!r}: {exc}", str(path)) from exc
    return spec_from_config(hf_config.to_dict(), str(path))


from memplan import specs_gemma4  # noqa: E402  (Gemma-4's builder reads this module's names: imported last)
