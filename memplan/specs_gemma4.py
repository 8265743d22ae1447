"""Gemma-4 (model types ``gemma4`` and ``gemma4_text``): its config.json resolved into a ``ModelSpec`` in pure Python.

Gemma-4's decoder layers are not alike, so the spec carries ``layer_groups`` (``memplan.specs.LayerGroup``). Every
count below mirrors transformers 5.25 ``models/gemma4/modeling_gemma4.py`` and ``configuration_gemma4.py``:

* **Layer types** (``Gemma4TextConfig.__post_init__``): ``layer_types`` as given, else five sliding layers to one
  full-attention layer; the last layer is always full attention. Sliding layers attend to ``sliding_window``
  tokens with ``head_dim``; full layers use ``global_head_dim`` (default 512; ``per_layer_config`` in a
  serialized config) and, with ``attention_k_eq_v``, ``num_global_key_value_heads`` and no ``v_proj``.
* **KV sharing** (``kv_sharing_modes``): the last ``num_kv_shared_layers`` layers reuse the keys and values of
  the last earlier layer of their type; they have no ``k_proj``, ``v_proj``, ``k_norm``, no cache of their own,
  and with ``use_double_wide_mlp`` an MLP twice as wide (``Gemma4TextMLP``).
* **A layer** (``Gemma4TextDecoderLayer``): q/k/v/o projections, ``q_norm`` and ``k_norm`` over the head dim
  (``v_norm`` has no weight), a gated GELU MLP, four RMSNorms, and with per-layer embeddings (PLE,
  ``hidden_size_per_layer_input`` = P > 0) ``per_layer_input_gate`` (h×P), ``per_layer_projection`` (P×h) and
  ``post_per_layer_input_norm`` (h). ``layer_scalar`` is a buffer, not a parameter.
* **Outside the layers** (``Gemma4TextModel``): the token embedding (V×h, tied to the LM head by default), the
  packed per-layer embedding ``embed_tokens_per_layer`` (V_ple × L·P), ``per_layer_model_projection`` (h × L·P),
  ``per_layer_projection_norm`` (P) and the final norm (h).
* **Towers** (``Gemma4Model``, when ``vision_config`` / ``audio_config`` are given): ``Gemma4VisionModel``,
  ``Gemma4AudioModel`` and their ``Gemma4MultimodalEmbedder`` projections into the text width — resident
  weights outside the decoder, as Gemma-3's SigLIP tower is.

Mixture-of-experts layers (``enable_moe_block``, Gemma-4 26B-A4B) and bidirectional attention are refused.
tests/test_gemma4.py checks the counts against transformers' own model built on the meta device and against the
weight bytes AgileRL measured for google/gemma-4-E2B-it and E4B-it.
"""

from __future__ import annotations

from memplan.errors import InputError
from memplan.specs import LayerGroup, Linear, ModelSpec, _linear_params, _read_bool, _read_int

# Gemma4TextConfig's, Gemma4VisionConfig's and Gemma4AudioConfig's defaults (transformers 5.25), for absent keys
TEXT_DEFAULTS = {
    "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131_072,
    "sliding_window": 512, "vocab_size_per_layer_input": 262_144, "hidden_size_per_layer_input": 256,
    "num_kv_shared_layers": 0, "global_head_dim": 512,
}
VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 16, "num_attention_heads": 12,
    "num_key_value_heads": 12, "head_dim": 64, "patch_size": 16, "position_embedding_size": 10 * 1024,
}
AUDIO_DEFAULTS = {
    "hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 8, "subsampling_conv_channels": [128, 32],
    "conv_kernel_size": 5, "output_proj_dims": 1536,
}
SLIDING_PATTERN = 6
"""``Gemma4TextConfig.__post_init__`` without ``layer_types``: layers 6, 12, … are full attention (5:1)."""


def _with_defaults(config: dict, defaults: dict) -> dict:
    return {**defaults, **{k: v for k, v in config.items() if v is not None}}


def _layer_types(text: dict, L: int) -> list[str]:
    types = text.get("layer_types")
    if types is None:
        types = ["sliding_attention" if (i + 1) % SLIDING_PATTERN else "full_attention" for i in range(L)]
    if not isinstance(types, list) or len(types) != L or not set(types) <= {"sliding_attention", "full_attention"}:
        raise InputError("layer_types", f"must list 'sliding_attention' or 'full_attention' for each of the {L} "
                         f"layers, got {types!r}", types)
    return [*types[:-1], "full_attention"]  # the last layer is forced to full attention


def _full_layer_shape(text: dict, k: int, L: int) -> tuple[int, int]:
    """(head_dim, KV heads) of a full-attention layer: ``per_layer_config`` when serialized, else
    ``global_head_dim`` and, with ``attention_k_eq_v``, ``num_global_key_value_heads``."""
    per_layer = text.get("per_layer_config")
    if isinstance(per_layer, dict) and per_layer:
        first = next(iter(per_layer.values()))
        return (_read_int(first, "head_dim", default=_read_int(text, "head_dim")),
                _read_int(first, "num_key_value_heads", default=k))
    d = _read_int(text, "global_head_dim")
    if _read_bool(text, "attention_k_eq_v", False):
        k = _read_int(text, "num_global_key_value_heads", default=k)
    return d, k


def gemma4_spec(config: dict, name: str) -> ModelSpec:
    """Resolve a Gemma-4 config.json (``Gemma4ForConditionalGeneration``, model type 'gemma4', or the text-only
    ``Gemma4ForCausalLM``, 'gemma4_text') into a ``ModelSpec`` with exact parameter counts."""
    multimodal = config.get("model_type") == "gemma4"
    text = config.get("text_config") if multimodal else config
    text = {} if text is None else text
    if not isinstance(text, dict):
        raise InputError("text_config", f"must be a JSON object, got {type(text).__name__}", None)
    text = _with_defaults(text, TEXT_DEFAULTS)
    if _read_bool(text, "enable_moe_block", False):
        raise InputError("enable_moe_block", "Gemma-4 mixture-of-experts layers (26B-A4B) are not modelled yet", True)
    if text.get("use_bidirectional_attention") is not None:
        raise InputError("use_bidirectional_attention", "memplan models causal language models only",
                         text.get("use_bidirectional_attention"))

    h, L, V = _read_int(text, "hidden_size"), _read_int(text, "num_hidden_layers"), _read_int(text, "vocab_size")
    a, k = _read_int(text, "num_attention_heads"), _read_int(text, "num_key_value_heads")
    d = _read_int(text, "head_dim")
    f, window = _read_int(text, "intermediate_size"), _read_int(text, "sliding_window")
    P = _read_int(text, "hidden_size_per_layer_input", minimum=0)
    shared = _read_int(text, "num_kv_shared_layers", minimum=0)
    if shared >= L:
        raise InputError("num_kv_shared_layers", f"must be below num_hidden_layers ({L}), got {shared}", shared)
    bias = _read_bool(text, "attention_bias", False)
    k_eq_v = _read_bool(text, "attention_k_eq_v", False)
    double_wide = _read_bool(text, "use_double_wide_mlp", False)
    types = _layer_types(text, L)
    if shared and set(types[L - shared:]) - set(types[:L - shared]):
        raise InputError("num_kv_shared_layers", "every layer type that reuses keys and values needs an earlier "
                         "layer of its type computing them", shared)
    d_full, k_full = _full_layer_shape(text, k, L)

    shapes: dict[tuple, int] = {}  # (type, kv_source) -> layers
    for i, kind in enumerate(types):
        key = (kind, i < L - shared)
        shapes[key] = shapes.get(key, 0) + 1
    groups = []
    for (kind, source), count in shapes.items():
        full = kind == "full_attention"
        dg, kg = (d_full, k_full) if full else (d, k)
        fg = f * (2 if double_wide and not source else 1)
        lins = [Linear(name="q_proj", in_features=h, out_features=a * dg, attention=True)]
        if source:
            lins.append(Linear(name="k_proj", in_features=h, out_features=kg * dg, attention=True))
            if not (k_eq_v and full):  # k_eq_v: full layers reuse the key projection as the value
                lins.append(Linear(name="v_proj", in_features=h, out_features=kg * dg, attention=True))
        lins.append(Linear(name="o_proj", in_features=a * dg, out_features=h, attention=True))
        params = sum(_linear_params(lin, bias) for lin in lins) + dg + (dg if source else 0)  # q_norm, k_norm
        mlp = [Linear(name="gate_proj", in_features=h, out_features=fg),
               Linear(name="up_proj", in_features=h, out_features=fg),
               Linear(name="down_proj", in_features=fg, out_features=h)]
        params += sum(_linear_params(lin, False) for lin in mlp) + 4 * h  # MLP, four norms
        ple = []
        if P:  # per_layer_input_gate, per_layer_projection (nn.Linear: peft's 'all-linear' adapts them), the norm
            ple = [Linear(name="per_layer_input_gate", in_features=h, out_features=P),
                   Linear(name="per_layer_projection", in_features=P, out_features=h)]
            params += sum(_linear_params(lin, False) for lin in ple) + h
        groups.append(LayerGroup(count=count, head_dim=dg, num_kv_heads=kg, intermediate_size=fg, kv_source=source,
                                 sliding_window=0 if full else window, params=params, linears=(*lins, *mlp, *ple)))
    # the uniform fields: the largest layer's shape (one layer's peak work), and the mean layer's parameters (so
    # L × layer_params stays within the decoder's count; FSDP's units and gradient shares read it)
    largest = max(groups, key=lambda g: (g.params, g.intermediate_size, g.head_dim))

    tied = _read_bool(config if multimodal else text, "tie_word_embeddings", True)
    embedding = V * h
    if P:  # embed_tokens_per_layer, per_layer_model_projection, per_layer_projection_norm
        embedding += _read_int(text, "vocab_size_per_layer_input") * L * P + h * L * P + P
    towers = 0
    if multimodal:
        towers = _vision_params(config.get("vision_config"), h) + _audio_params(config.get("audio_config"), h)
    lm_head = 0 if tied else V * h
    decoder = sum(g.count * g.params for g in groups)
    return ModelSpec(
        name=name, model_type=str(config.get("model_type")), hidden_size=h, num_layers=L, num_heads=a,
        num_kv_heads=largest.num_kv_heads, head_dim=max(g.head_dim for g in groups),
        intermediate_size=max(g.intermediate_size for g in groups), vocab_size=V, gated_mlp=True,
        tie_word_embeddings=tied,
        max_position_embeddings=_read_int(text, "max_position_embeddings", default=0, minimum=0),
        num_params=embedding + decoder + h + lm_head + towers,  # + final norm
        embedding_params=embedding, lm_head_params=lm_head, layer_params=decoder // L, linears=largest.linears,
        layer_groups=tuple(groups), per_layer_input_size=P,
    )


def _vision_params(vision: dict | None, text_hidden: int) -> int:
    """``Gemma4VisionModel`` + ``embed_vision``: patch projection (3·p²×h) and the 2-D position table
    (2 × positions × h); per layer bias-free q/k/v/o (``Gemma4ClippableLinear``), q_norm and k_norm over the head
    dim, gated MLP and four norms; the embedder's projection h → text width (its norm has no weight)."""
    if vision is None:
        return 0
    if not isinstance(vision, dict):
        raise InputError("vision_config", f"must be a JSON object, got {type(vision).__name__}", None)
    v = _with_defaults(vision, VISION_DEFAULTS)
    h, f, L = _read_int(v, "hidden_size"), _read_int(v, "intermediate_size"), _read_int(v, "num_hidden_layers")
    a, k, d = _read_int(v, "num_attention_heads"), _read_int(v, "num_key_value_heads"), _read_int(v, "head_dim")
    patch, positions = _read_int(v, "patch_size"), _read_int(v, "position_embedding_size")
    layer = h * a * d + 2 * h * k * d + a * d * h + 2 * d + 3 * h * f + 4 * h
    return 3 * patch * patch * h + 2 * positions * h + L * layer + h * text_hidden


def _audio_params(audio: dict | None, text_hidden: int) -> int:
    """``Gemma4AudioModel`` + ``embed_audio``: two 3×3 convolutions (no bias) with weight-only LayerNorms and the
    input projection; per conformer layer two feed-forwards (h → 4h → h, two norms each), attention (q, k, v,
    post, relative_k: five h×h, ``per_dim_scale`` over the head dim), the light convolution (h → 2h GLU,
    depthwise kernel, h → h, two norms) and three norms; the output projection (with bias) and the embedder's
    projection into the text width."""
    if audio is None:
        return 0
    if not isinstance(audio, dict):
        raise InputError("audio_config", f"must be a JSON object, got {type(audio).__name__}", None)
    au = _with_defaults(audio, AUDIO_DEFAULTS)
    h, L, heads = _read_int(au, "hidden_size"), _read_int(au, "num_hidden_layers"), _read_int(au, "num_attention_heads")
    kernel, out = _read_int(au, "conv_kernel_size"), _read_int(au, "output_proj_dims")
    channels = au["subsampling_conv_channels"]
    if not (isinstance(channels, list) and len(channels) == 2):
        raise InputError("subsampling_conv_channels", f"must be two channel counts, got {channels!r}", channels)
    c0, c1 = (_read_int({"subsampling_conv_channels": c}, "subsampling_conv_channels") for c in channels)
    subsample = (c0 * 9 + c0) + (c1 * c0 * 9 + c1) + (c0 // 4) * c1 * h
    feed_forward = 2 * 4 * h * h + 2 * h
    attention = 5 * h * h + h // heads
    light_conv = 2 * h * h + h * h + h * kernel + 2 * h
    layer = 2 * feed_forward + attention + light_conv + 3 * h
    return subsample + L * layer + (h * out + out) + out * text_hidden
