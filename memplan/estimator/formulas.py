"""Memory formulas: one plain function per component, bytes as ``int``.

Shape letters (see ``memplan.specs``): b micro-batch, s sequence length, h hidden, a heads, k KV heads,
d head dim, f MLP width, L layers, V vocabulary, Ψ parameters, e bytes per element of the compute dtype.

Sources:
* Model states: Rajbhandari et al. 2020, "ZeRO" (arXiv 1910.02054), §3: 2Ψ + 2Ψ + KΨ with K = 12 for
  mixed-precision Adam.
* Activations: Korthikanti et al. 2022 (arXiv 2205.05198), §4: s·b·h·(34 + 5·a·s/h) bytes per GPT layer
  (``korthikanti_layer_bytes``). memplan counts what transformers' decoder layers really save, tensor by
  tensor (``saved_bytes_per_token``): for a Llama layer in bf16 that is 45.5·s·b·h, not 34, because RMSNorm
  saves an fp32 upcast and SwiGLU keeps four f-wide tensors (../shared/REFERENCE.md, traced).
* KV cache: 2 · L · k · d · tokens · e.
* Logits: the RL log-prob path ``log_softmax(logits.float()).gather(ids)`` (TRL, verl): b·s·V in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memplan.errors import InputError
from memplan.specs import ModelSpec, layer_views

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
QUANT_BYTES_PER_PARAM = {"int8": 1.0 + 4 / 4096, "int4": 0.5 + 0.127 / 8}
"""bitsandbytes: LLM.int8 keeps one fp32 scale per row (≈4/h bytes per weight); NF4 with double
quantization costs 4.127 bits per weight (Dettmers et al. 2023, QLoRA, §2)."""

ALLOC_BLOCK = 512
"""The CUDA caching allocator rounds every block up to 512 bytes."""

GATED_ACTS = {"llama", "mistral", "qwen2", "qwen3", "mixtral", "phi3", "gemma", "gemma2", "gemma3_text", "gemma3",
              "gemma4", "gemma4_text", "qwen2_moe", "qwen3_moe", "olmoe"}
"""Gated MLPs, ``down(act(gate(x)) * up(x))``: SwiGLU, and Gemma's gated GELU (transformers 5.25
``modeling_gemma3.py::Gemma3MLP``: ``act_fn(gate_proj(x)) * up_proj(x)``); OLMoE's experts likewise."""
LAYERNORM_FAMILIES = {"opt", "gpt2", "gpt_neox"}
GEMMA_NORM = {"gemma", "gemma2", "gemma3_text", "gemma3", "gemma4", "gemma4_text"}
"""RMSNorm that normalizes and scales in fp32 and casts back after (``Gemma3RMSNorm.forward``:
``self._norm(x.float()) * (1.0 + self.weight.float())``, then ``type_as(x)``): its weight's gradient keeps the
fp32 normalized tensor (4h), not a 16-bit one."""
POST_NORMS = {"gemma2", "gemma3_text", "gemma3", "gemma4", "gemma4_text"}
"""Post-attention and post-feedforward norms before each residual add (``Gemma3DecoderLayer``: four norms)."""
GEMMA4 = {"gemma4", "gemma4_text"}
"""Layers of several shapes (``ModelSpec.layer_groups``): per-layer formulas are summed over ``layer_views``."""


def round_block(n_bytes: int) -> int:
    """Round up to the allocator's 512-byte blocks."""
    return -(-n_bytes // ALLOC_BLOCK) * ALLOC_BLOCK


def weight_bytes(num_params: int, bytes_per_param: float) -> int:
    """Ψ · bytes per parameter."""
    return int(math.ceil(num_params * bytes_per_param))


def lora_params(spec: ModelSpec, rank: int, targets: str) -> int:
    """Trainable LoRA parameters: r · (in + out) per adapted matrix, over every layer (Hu et al. 2021, §4),
    as peft 0.21 builds them with ``target_modules='all-linear'`` (checked against peft in the tests)."""
    if rank == 0:
        return 0
    if spec.layer_groups:  # layers of several shapes (Gemma-4): each group's adapters, and 'all-linear' also
        # adapts the model-level ``per_layer_model_projection`` (h → L·P, an nn.Linear outside the layers)
        model_level = rank * (spec.hidden_size + spec.num_layers * spec.per_layer_input_size) if (
            targets == "all-linear" and spec.per_layer_input_size) else 0
        return sum(lora_params(view, rank, targets) for view in layer_views(spec)) + model_level
    per_layer = 0
    for lin in spec.linears:
        if targets != "all-linear" and not lin.attention:
            continue
        out = lin.out_features
        if lin.count > 1 and lin.name in ("w1", "w3", "gate_proj", "up_proj"):
            # transformers 5 fuses MoE experts' gate and up into one [E, 2f, h] tensor; peft's ParamWrapper
            # gives it lora_A (2·r·E, h) and lora_B (2f, 2·r·E): per half, r·E·(h + 2f)
            out = 2 * out
        per_layer += lin.count * rank * (lin.in_features + out)
    return per_layer * spec.num_layers


def linear_params(spec: ModelSpec) -> int:
    """Parameters in the decoder layers' linear matrices: what bitsandbytes quantizes for QLoRA."""
    if spec.layer_groups:
        return sum(linear_params(view) for view in layer_views(spec))
    return spec.num_layers * sum(lin.count * lin.in_features * lin.out_features for lin in spec.linears)


def dequantized_weight_bytes(spec: ModelSpec, e: int, tp: int = 1) -> int:
    """bitsandbytes' 4-bit matmul workspace: the largest quantized weight dequantized to the compute dtype, e·out·in.
    Its forward over more rows than its fused kernel takes falls back to ``dequantize_4bit`` + ``F.linear``
    (bitsandbytes 0.50 ``backends/cuda/ops.py:934-974``, ``_dequant_linear_fallback``) and its backward computes
    the input's gradient against ``F.dequantize_4bit(B)`` (``autograd/_functions.py:381``, ``MatMul4Bit.backward``):
    one weight at a time, beside the layer's tensors. Fused MoE experts are not quantized (bitsandbytes replaces
    ``nn.Linear`` only)."""
    if spec.layer_groups:
        return max(dequantized_weight_bytes(view, e, tp) for view in layer_views(spec))
    dense = [lin.in_features * lin.out_features for lin in spec.linears if not (spec.num_experts and lin.count > 1)]
    return e * max(dense, default=0) // tp


def optimizer_state_bytes_per_param(optimizer: str, state_dtype_bytes: int) -> float:
    """Optimizer state per trained parameter.

    AdamW: m and v (2 × state dtype); 8-bit Adam (bitsandbytes): 2 bytes plus block-wise scales;
    SGD with momentum: 1 × state dtype; Adafactor: factored second moment, ≈ 0 per parameter (counted as 0.05).
    """
    return {
        "adamw": 2.0 * state_dtype_bytes,
        "adamw-8bit": 2.0 + 2 * 4 / 2048,
        "sgd": 1.0 * state_dtype_bytes,
        "adafactor": 0.05 * state_dtype_bytes,
    }[optimizer]


def kv_cache_bytes(spec: ModelSpec, tokens: int, sequences: int, e: int, tp: int = 1) -> int:
    """KV cache: 2 (K and V) · L · k · d · tokens · sequences · e, split over tensor-parallel ranks by KV head.

    Gemma-4 (``layer_groups``): summed over the layers that compute keys and values — a KV-shared layer reuses an
    earlier layer's and caches nothing (transformers 5.25 ``Gemma4TextAttention.forward``: no ``cache.update``
    when ``is_kv_shared_layer``; vLLM likewise allocates no cache for ``kv_sharing_target_layer_name`` layers) —
    and a sliding-window layer holds at most its window (``DynamicSlidingWindowLayer`` keeps the last
    ``sliding_window − 1`` tokens, cache_utils.py; vLLM frees blocks that leave the window): min(tokens, w).
    """
    if spec.layer_groups:
        return sum(
            kv_cache_bytes(view, min(tokens, g.sliding_window) if g.sliding_window else tokens, sequences, e, tp)
            for view in layer_views(spec) if (g := view.layer_group).kv_source
        )
    kv_heads = max(1, spec.num_kv_heads // tp)
    return 2 * spec.num_layers * kv_heads * spec.head_dim * tokens * sequences * e


def korthikanti_layer_bytes(s: int, b: int, h: int, a: int) -> int:
    """Korthikanti et al. 2022, eq. (1): activations of one GPT layer, 16-bit, no recomputation, no parallelism."""
    return s * b * h * 34 + 5 * a * s * s * b


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerActivation:
    """Bytes one token keeps alive in one decoder layer for backward, split by who keeps them."""

    base: float
    """Saved by the model's own operations (norms, attention, MLP)."""
    lora: float
    """Saved by LoRA adapters (their input copies and low-rank intermediates)."""
    attention_scores: float
    """Eager attention's b·a·s² softmax and probabilities, per token (scales with s)."""
    implementation: float = 0.0
    """What transformers' implementation keeps beyond the layer's own tensors (``base``), traced: GPT-NeoX's
    fused QKV output stays alive through the views attention saves of it, beside the rotary-embedded q and
    k and a contiguous copy of v (3·e·h); its parallel residual feeds both norms one input (− e·h)."""
    largest_layer_excess: float = 0.0
    """Layers of several shapes (Gemma-4): the fields above are the average over the L layers (so L × them is
    the model's sum); this is what the largest layer keeps beyond that average (one layer recomputed)."""


def saved_bytes_per_token(
    spec: ModelSpec,
    e: int,
    *,
    seq_len: int,
    weights_trainable: bool,
    lora_rank: int = 0,
    lora_targets: str = "all-linear",
    lora_dtype_bytes: int = 4,
    eager_attention: bool = False,
    tp: int = 1,
) -> LayerActivation:
    """Bytes one token saves for backward in one decoder layer of ``spec`` (transformers' implementation).

    Derivation for a Llama layer (SwiGLU, RMSNorm, SDPA/flash, no dropout), per token:
    * each RMSNorm saves its fp32 upcast (4h), and if its weight trains, the normalized bf16 tensor (e·h);
      its output (e·h) is saved by the next linears when their weights train (autograd saves a matmul's
      input only when the weight needs a gradient) or when bf16 LoRA adapters read it;
    * attention saves q, k, v, the output (e·(a·d + 2·k·d + a·d)) and the fp32 log-sum-exp (4a);
    * SwiGLU saves gate, act(gate), up (3·e·f) and their product (e·f, the down projection's input) when
      the down weight trains.
    Full fine-tuning of Llama-2-7B in bf16: 2·(4+2+2)h + 8h + 8f = 45.5h bytes for f = 2.6875h.
    LoRA with fp32 adapters (peft's default) makes each adapted linear cast its input to fp32 (4·in) and
    keep the rank-r intermediate (4r).
    """
    if spec.layer_groups:  # Gemma-4: the average layer, and the largest layer's excess over it
        return _average_layer(spec, e, seq_len=seq_len, weights_trainable=weights_trainable, lora_rank=lora_rank,
                              lora_targets=lora_targets, lora_dtype_bytes=lora_dtype_bytes,
                              eager_attention=eager_attention, tp=tp)
    h, a, k, d, f = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.intermediate_size
    a_t, k_t, f_t = a / tp, max(1, k // tp), f / tp
    layernorm = spec.model_type in LAYERNORM_FAMILIES
    linear_in = weights_trainable  # a frozen linear keeps no input for its weight gradient

    def norm(out_read_by_linears: bool) -> float:
        if layernorm:  # native layer_norm saves its input (e·h) and fp32 mean/rstd
            saved = e * h + 8
        else:  # fp32 upcast, plus the normalized tensor the weight multiply keeps
            saved = 4 * h + (e * h if weights_trainable else 0)
            if spec.model_type in GEMMA_NORM:  # Gemma normalizes and scales in fp32
                saved = 4 * h + (4 * h if weights_trainable else 0)
        return saved + (e * h if out_read_by_linears else 0)

    adapted = [lin for lin in spec.linears if lora_rank and (lora_targets == "all-linear" or lin.attention)]
    lora_bf16_reads_norm = bool(adapted) and lora_dtype_bytes == e
    pre_norms = 2 * norm(linear_in or lora_bf16_reads_norm)
    post_norms = 0.0
    if spec.model_type in POST_NORMS:  # post-attention and post-feedforward norms feed the residual add
        post_norms = 2 * norm(False)

    attention = e * (2 * a_t * d + 2 * k_t * d) + 4 * a_t
    if spec.model_type in ("qwen3", "qwen3_moe", "olmoe"):  # q_norm and k_norm, Llama-style RMSNorm
        # Qwen3's per head (over d), OLMoE's over the whole projection (``OlmoeAttention``: q_norm over
        # hidden_size = a·d, k_norm over k·d): the same a·d + k·d elements per token either way
        attention += (4 + (e if weights_trainable else 0)) * (a_t + k_t) * d
    elif spec.model_type in ("gemma3_text", "gemma3", *GEMMA4):  # per-head q_norm, k_norm, Gemma-style (fp32)
        attention += (4 + (4 if weights_trainable else 0)) * (a_t + k_t) * d
    group = spec.layer_group
    if group is not None and not group.kv_source:  # Gemma-4 KV-shared layer: k and v are the producer's tensors
        attention -= e * 2 * k_t * d + (4 + (4 if weights_trainable else 0)) * k_t * d
    elif group is not None:  # v_norm (no weight) keeps its fp32 upcast
        attention += 4 * k_t * d

    if spec.num_experts:
        topk = spec.experts_per_token
        # per routed copy of a token: its hidden state sorted by expert and the expert's down output (2·e·h),
        # gate_up, act(gate) (3·e·f) and their product (the down input); the router's fp32 probabilities,
        # top-k indices, weights and sort order (traced, fused experts with a grouped matmul)
        mlp = topk * (3 * e * f + (e * f if linear_in else 0) + 2 * e * h) + (e + 4) * spec.num_experts + 28 * topk
    elif spec.model_type in GATED_ACTS:
        mlp = 3 * e * f_t + (e * f_t if linear_in else 0)
    elif spec.model_type == "opt":  # ReLU keeps its output, which is also fc2's input
        mlp = e * f_t
    elif spec.model_type == "gpt2":  # gelu_new is composed of element-wise ops keeping ≈5 f-wide tensors
        mlp = 4 * e * f_t + (e * f_t if linear_in else 0)
    else:  # exact GELU keeps its input; fc2 keeps GELU's output
        mlp = e * f_t + (e * f_t if linear_in else 0)

    lora = 0.0
    if adapted:
        for lin in adapted:
            copies = lin.count if not spec.num_experts else spec.experts_per_token
            input_copy = 4 * lin.in_features if lora_dtype_bytes != e else 0
            if (lora_dtype_bytes == e and lin.name in ("down_proj", "fc2", "dense_4h_to_h", "mlp.c_proj", "w2")
                    and spec.model_type != "opt"):  # OPT's ReLU output, fc2's input, is counted in ``mlp``
                input_copy = e * lin.in_features  # the down projection's input, kept for lora_A
            lora += copies * (input_copy + lora_dtype_bytes * lora_rank)

    per_layer_input = 0.0
    if group is not None and spec.per_layer_input_size:  # Gemma-4 PLE: gate → GELU → × per-layer input → proj
        P = spec.per_layer_input_size
        # GELU keeps the gate's output, the product keeps GELU's (its other factor is a view of the model-level
        # ``per_layer_inputs``, ``per_layer_inputs_bytes_per_token``); the projection keeps the product and the
        # gate keeps the residual stream when their weights train; post_per_layer_input_norm as a post norm
        per_layer_input = 2 * e * P + (e * P + e * h if linear_in else 0) + norm(False)
    scores = (4 + e) * a_t * seq_len if eager_attention else 0.0
    implementation = 0.0
    if spec.model_type == "gpt_neox":
        implementation = 3 * e * a_t * d - (e * h + 8)
    return LayerActivation(base=pre_norms + post_norms + attention + mlp + per_layer_input, lora=lora,
                           attention_scores=scores, implementation=implementation)


def _average_layer(spec: ModelSpec, e: int, **kw: object) -> LayerActivation:
    """``saved_bytes_per_token`` of a model with layers of several shapes: each group's (``layer_views``) weighted
    by its layer count, averaged over the L layers, and the largest layer's excess over that average."""
    per = [(view.num_layers, saved_bytes_per_token(view, e, **kw))  # type: ignore[arg-type]
           for view in layer_views(spec)]
    L = spec.num_layers

    def avg(name: str) -> float:
        return sum(n * getattr(act, name) for n, act in per) / L

    base, lora, scores = avg("base"), avg("lora"), avg("attention_scores")
    largest = max(act.base + act.lora + act.attention_scores for _, act in per)
    return LayerActivation(base=base, lora=lora, attention_scores=scores,
                           largest_layer_excess=largest - (base + lora + scores))


def per_layer_inputs_bytes_per_token(spec: ModelSpec, e: int, *, weights_trainable: bool, grad: bool,
                                     lora_rank: int = 0, lora_dtype_bytes: int = 4) -> float:
    """Gemma-4's per-layer inputs (PLE), made once before the layers and alive until the last layer's backward
    (transformers 5.25 ``Gemma4TextModel.get_per_layer_inputs`` / ``project_per_layer_inputs``): a
    [tokens, L, P] tensor, e·L·P per token, that every layer reads a slice of (gradient checkpointing keeps each
    layer's slice, a view of it). When it needs a gradient (``grad``: the input embeddings' output requires
    grad under checkpointing, ``enable_input_require_grads``), ``per_layer_projection_norm`` keeps its fp32
    upcast (4·L·P) and, when its weight trains, the fp32 normalized tensor (4·L·P). A LoRA adapter on
    ``per_layer_model_projection`` (``lora_rank``, 'all-linear') keeps, like a layer's (``saved_bytes_per_token``),
    its input cast to the adapter's dtype (4·h for fp32 adapters) and its rank-r intermediate. 0 without PLE."""
    LP = spec.num_layers * spec.per_layer_input_size
    if not LP:
        return 0.0
    lora = (lora_dtype_bytes * spec.hidden_size if lora_dtype_bytes != e else 0) + lora_dtype_bytes * lora_rank
    return e * LP + ((4 + (4 if weights_trainable else 0)) * LP + (lora if lora_rank else 0) if grad else 0)


def shared_kv_bytes_per_token(spec: ModelSpec, e: int, tp: int = 1) -> float:
    """Gemma-4 with gradient checkpointing: the keys and values the last KV-computing layer of each type hands
    to the KV-shared layers (``shared_kv_states``, ``Gemma4TextAttention.forward``, 'store' layers) stay alive
    through the forward and backward — each checkpointed shared layer's recomputation holds the dict — where a
    checkpointed layer's own K and V would be dropped: 2·e·k·d per token for each such layer type."""
    if not any(not g.kv_source for g in spec.layer_groups):
        return 0.0
    stored = {(g.sliding_window > 0): (max(1, g.num_kv_heads // tp), g.head_dim)
              for g in spec.layer_groups if g.kv_source}
    return sum(2 * e * k * d for k, d in stored.values())


def uniform_layers_only(spec: ModelSpec, what: str, field: str) -> None:
    """Refuse a mechanism modelled for alike layers when the model's differ (Gemma-4: per-layer head dims and
    KV heads, shared KV)."""
    if spec.layer_groups:
        raise InputError(field, f"{what} is not modelled for {spec.model_type} (layers with different head dims, "
                         "shared keys and values)", None)


def final_norm_bytes_per_token(spec: ModelSpec, e: int, *, weights_trainable: bool, lm_head_input: bool) -> float:
    """Bytes one token saves for backward in the norm after the last decoder layer (traced: the same tensors
    as a layer's own norms, see ``saved_bytes_per_token``).

    RMSNorm keeps its fp32 upcast (4h) and, when its weight trains, the normalized 16-bit tensor (e·h);
    LayerNorm keeps its input (e·h) and fp32 mean and rstd (8). ``lm_head_input``: the norm's output is also
    kept by the LM head for its weight gradient (full fine-tuning, every position through the head).
    """
    h = spec.hidden_size
    if spec.model_type in LAYERNORM_FAMILIES:
        saved = e * h + 8
    elif spec.model_type in GEMMA_NORM:
        saved = 4 * h + (4 * h if weights_trainable else 0)
    else:
        saved = 4 * h + (e * h if weights_trainable else 0)
    return saved + (e * h if lm_head_input else 0)


def norm_input_bytes_per_token(spec: ModelSpec, e: int) -> float:
    """What a norm keeps of its input for backward, per token: RMSNorm its fp32 upcast (4h), LayerNorm its
    input and fp32 mean and rstd (e·h + 8). Nothing when its input needs no gradient: the first layer's
    input norm under LoRA, whose input is the frozen embedding's output (traced)."""
    if spec.model_type in LAYERNORM_FAMILIES:
        return e * spec.hidden_size + 8
    return 4 * spec.hidden_size


def backward_transient_per_token(spec: ModelSpec, e: int, tp: int = 1, lora_mlp: bool = False) -> float:
    """Gradients of activations alive at once inside one decoder layer's backward, per token (traced).

    The largest moment is the MLP's: the gradient of the down projection's input, and of the two tensors it
    was made from (act(gate) and up; ReLU's and gelu_new's saved chain), beside the incoming gradient:
    2·e·f + e·h; e·f + e·h for GPT-NeoX's exact GELU. In OPT an adapted fc2 sends a second f-wide gradient
    to its input through the LoRA path (+ e·f; traced; in the other families it is gone by the peak).
    """
    if spec.layer_groups:
        return max(backward_transient_per_token(view, e, tp, lora_mlp) for view in layer_views(spec))
    h, f = spec.hidden_size, spec.intermediate_size / tp
    if spec.num_experts:
        # and, per routed copy, the gradient of the router-weighted output (fp32 where the router weights
        # stay fp32: Mixtral) and of the sorted copy (traced, within a few % on both MoE families)
        k, w = spec.experts_per_token, (4 if spec.model_type == "mixtral" else e)
        return k * (2 * e * f + w * h + e * h) + e * h
    lora = e * f if lora_mlp and spec.model_type == "opt" else 0.0  # fc2's LoRA path: a second input gradient
    if spec.model_type == "gpt_neox":  # exact GELU: only its input's gradient joins the incoming one
        return e * f + e * h + lora
    return 2 * e * f + e * h + lora


def norm_backward_transient_per_token(spec: ModelSpec, e: int) -> float:
    """Gradients alive at once in the backward of a norm, per token: RMSNorm's runs in fp32 (its upcast's
    gradient and the products of its chain rule, five fp32 h-wide tensors, traced); LayerNorm's native
    backward makes the input gradient beside the incoming one."""
    h = spec.hidden_size
    if spec.model_type in LAYERNORM_FAMILIES:
        return 2 * e * h
    return 5 * 4 * h


def layer_forward_transient_per_token(spec: ModelSpec, e: int, tp: int = 1, lora_mlp: bool = False) -> float:
    """Peak extra bytes per token inside one layer's forward without autograd (rollout prefill, scoring).

    The largest moment is the MLP's (each traced per family, transformers 5):
    * gated MLP: gate, up and act(gate) alive at once (3·e·f), next to the residual and the fp32 norm upcast
      (2·e·h + 4h); a peft LoRA layer adds its low-rank path to the base output out of place
      (``result = result + lora_B(lora_A(x))``): one more f-wide tensor when the MLP is adapted (OPT: and
      one h-wide);
    * GPT-2's ``gelu_new`` is a chain of element-wise ops: four f-wide tensors at once, beside five h-wide
      ones (embeddings, residual, LayerNorm output; no fp32 upcast);
    * MoE (fused 3-D experts, grouped matmul): every token's k copies of its hidden state sorted by expert,
      their gate_up output (2f), act(gate) and its product with up — k·e·(h + 4f) — or, when f < h, the
      k·h-wide down outputs, their weighted copies and the unsorted result (k·e·4h); plus the router's top-k
      indices and weights.
    """
    if spec.layer_groups:  # the largest layer, beside Gemma-4's per-layer inputs (alive through the forward)
        return (max(layer_forward_transient_per_token(view, e, tp, lora_mlp) for view in layer_views(spec))
                + per_layer_inputs_bytes_per_token(spec, e, weights_trainable=False, grad=False))
    h, f = spec.hidden_size, spec.intermediate_size / tp
    if spec.num_experts:
        k = spec.experts_per_token
        experts = k * e * max(h + 4 * f, 4 * h) + 24 * k + e * spec.num_experts
        return experts + 2 * e * h + 4 * h
    if spec.model_type == "gpt2":
        return 4 * e * f + 5 * e * h
    mlp = (3 if spec.model_type in GATED_ACTS else 2) * e * f
    if lora_mlp:
        mlp += e * f + (e * h if spec.model_type == "opt" else 0)
    return mlp + 2 * e * h + 4 * h


def tied_embedding_gradient_sum_bytes(spec: ModelSpec, e: int, tp: int = 1) -> int:
    """The end of a full fine-tuning backward when the LM head is tied to the input embedding: 3·e·V·h.

    The shared weight gets two gradients — the LM head's matmul (e·V·h) and ``embedding_dense_backward``'s
    (e·V·h) — and autograd's input buffer sums them out of place (``aten.add``, a third e·V·h) before the sum
    is accumulated into ``.grad`` (traced; the same C++ path on CUDA). On a large vocabulary this moment,
    not the layers', sets the backward's peak (Qwen2.5-0.5B: 779 MiB; Llama-3.2-1B: 1.5 GiB).
    """
    return 3 * e * spec.vocab_size * spec.hidden_size // tp


def logprob_logits_bytes(tokens: int, vocab: int, e: int, training: bool, tp: int = 1) -> int:
    """Peak of the log-prob path over ``tokens`` positions: ``log_softmax(logits.float()).gather(ids)``.

    Scoring (no autograd): bf16 logits, their fp32 copy and the fp32 log-softmax alive at once: (e + 8)·V.
    Training: the forward keeps the fp32 log-softmax (4V); backward of log-softmax holds its output, the
    incoming gradient (gather's dense backward) and its result at once: 3 · 4V per token.
    """
    v = vocab / tp
    per_token = 12 * v if training else (e + 8) * v
    return int(tokens * per_token)


# --- DeepSpeed-Chat and ReMax on DeepSpeed's hybrid engine -------------------------------------------------
# What ``rollout_engine='hybrid-engine'`` means: the versions ReMax pins (environment.yml: deepspeed 0.10.3,
# transformers 4.31.0, torch 2.0.1) running DeepSpeed-Chat's PPO trainer or ReMax's trainer. Line numbers are
# those of the pip packages; the trainers are cited by file and function (../notes/research_dschat.md).


def fused_logprob_bytes(tokens: int, vocab: int, e: int, tp: int = 1) -> int:
    """Peak of a fused cross-entropy over ``tokens`` positions, training or not: flash-attn's
    ``cross_entropy_loss`` as verl calls it (``logprobs_from_logits``, ``inplace_backward=True``), Liger's.

    The kernel reads the 16-bit logits block by block in fp32 registers and writes fp32 per-position outputs
    (the loss and the log-sum-exp it saves); its backward writes the logits' gradient into the logits: e·V + 8
    bytes per position. (The log-softmax path makes an fp32 copy and an fp32 log-softmax: ``logprob_logits_bytes``.)
    """
    return int(tokens * (e * vocab / tp + 8))


def fp32_fused_logprob_bytes(tokens: int, vocab: int, e: int, training: bool, tp: int = 1) -> int:
    """Peak of OpenRLHF 0.11's log-prob path over ``tokens`` positions (``Actor.forward``: every position's
    logits cast to fp32, the 16-bit ones dropped; ``log_probs_from_logits`` on fp32 logits calls flash-attn's
    ``cross_entropy_loss``, a hard dependency, with its default ``inplace_backward=False``).

    Scoring: the 16-bit logits and their fp32 copy at the cast, (e + 4)·V (no copy in fp32: 4·V), or the fp32
    logits with the kernel's three fp32 outputs per row (loss, log-sum-exp, z-loss), whichever is larger; and
    the rolled int64 labels (8 per position). Training, at the kernel's backward: the fp32 logits it saved, the
    gradient it allocates (``torch.empty_like(logits)``: 4·V more), its saved log-sum-exp, the incoming
    gradient and the labels: 8·V + 16.
    """
    v = vocab / tp
    if training:
        return int(tokens * (8 * v + 16))
    cast = (e + 4) * v if e != 4 else 4 * v
    return int(tokens * (max(cast, 4 * v + 12) + 8))


CHUNK_TOKENS = 4096
"""Positions per tile of TRL's chunked LM head (trl 1.16 ``kernels/chunked_logprob.py``: ``TOKEN_CHUNK_SIZE``)."""
CHUNK_VOCAB = 32768
"""Vocabulary columns per tile (trl 1.16 ``trainer/utils.py``: ``_CHUNKED_LOGPROB_CHUNK_SIZE``)."""


def chunked_logprob_bytes(tokens: int, positions: int, vocab: int, hidden: int, e: int, *, training: bool,
                          head_trains: bool, tp: int = 1) -> int:
    """Peak of TRL 1.16's fused LM head over ``tokens`` scored positions of ``positions`` in all (trl
    ``add_fused_lm_head`` → ``kernels/chunked_logprob.py::_ChunkedLogProbFunction``): the logits never exist.

    Forward (scoring): the backbone's last hidden states (e·h per position), the scored positions' compact copy
    (``hidden_states[mask]``: e·h + 8 bytes of int64 label per scored position), seven fp32 running statistics
    and the fp32 log-probs and log-sum-exp (36 bytes), and one [min(N, 4096), min(V, 32768)] 16-bit tile.
    Training, at the start of backward: the saved copy, labels and log-sum-exp (e·h + 12), the incoming fp32
    gradient and its masked select (8), the tile again, the fp32 accumulator of the hidden states' gradient
    and its 16-bit copy ((4 + e)·h per position) and, when the LM head trains, its fp32 gradient accumulator
    and 16-bit copy ((4 + e)·V·h).
    """
    v = vocab // tp
    tile = min(tokens, CHUNK_TOKENS) * min(v, CHUNK_VOCAB) * e
    if not training:
        return tile + positions * e * hidden + tokens * (e * hidden + 8 + 36)
    head = (4 + e) * v * hidden if head_trains else 0
    return tile + tokens * (e * hidden + 12 + 8 + (4 + e) * hidden) + head


ROW_CHUNK_TILE_BYTES = 256 * 1024**2
"""The fp32 logit tile AgileRL sizes its row-chunks for (``agilerl/memory/formulas.py::resolve_chunk_rows``, line
248 at AgileRL 0151c660), with rows clamped to [128, 4096] (``FUSED_CHUNK_ROWS_MIN``/``MAX``, lines 244-245)."""


def row_chunk_rows(vocab: int, explicit: int | None = None) -> int:
    """Rows per tile of the row-chunked LM head: ``explicit``, else 2^28 // (4·V) clamped to [128, 4096]
    (Qwen2.5's V = 151,936: 441 rows)."""
    if explicit is not None:
        return explicit
    return max(128, min(4096, ROW_CHUNK_TILE_BYTES // max(1, vocab * 4)))


def row_chunked_logprob_bytes(positions: int, seqs: int, vocab: int, hidden: int, e: int, *, rows: int,
                              training: bool, head_trains: bool, tp: int = 1) -> int:
    """Peak of AgileRL's row-chunked LM head over ``positions`` scored positions of ``seqs`` sequences
    (``agilerl/algorithms/core/llm_ops/fused_logprobs.py`` at 0151c660: ``fused_linear_logprobs_chunked``, line
    103, and ``FusedLinearLogProbsFunction``, line 162; the chunk body is ``torch.compile``'d, so its fp32 cast,
    gather and log-sum-exp fuse into one kernel over the 16-bit logits and never materialize in fp32).

    Forward (no grad): one [c, V] tile of 16-bit logits (c = min(rows, N)), the 16-bit result per position and,
    when the batch has more than one sequence, the contiguous copies ``reshape`` makes of the ``[:, :-1]`` slices
    (hidden states e·h, int64 targets 8): c·V·e + N·e (+ N·(e·h + 8)).
    Training, in backward: ``grad_hidden = zeros_like(flat_h)`` (e·h per position), the same copies, and per chunk
    the recomputed tile (saved for the compiled backward) beside its gradient: 2·c·V·e + N·e·h (+ N·(e·h + 8)),
    plus, when the LM head trains, its gradient accumulator and one chunk's gradient (2·V·h·e).
    """
    v, n = vocab // tp, positions
    tile = min(rows, n) * v * e
    copies = n * (e * hidden + 8) if seqs > 1 else 0
    if not training:
        return tile + n * e + copies
    head = 2 * v * hidden * e if head_trains else 0
    return 2 * tile + n * e * hidden + copies + head


HYBRID_ENGINE_FUSED = {"llama": ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"),
                       "opt": ("q_proj", "k_proj", "v_proj"), "gptj": ("q_proj", "k_proj", "v_proj"),
                       "gpt_neo": ("q_proj", "k_proj", "v_proj")}
"""The weights DeepSpeed 0.10.3's hybrid-engine policies concatenate into a new tensor, per model type
(``module_inject/containers``: ``LLAMALayerPolicy.attention`` ``torch.cat((qw, kw, vw))`` and ``.mlp``
``torch.cat((up, gate))``; ``HFOPTLayerPolicy.attention`` q, k, v weights and biases; GPT-J's and GPT-Neo's q, k,
v). GPT-NeoX, BLOOM and GPT-2 keep a fused QKV of their own; other model types have no policy."""


def hybrid_engine_fused_weight_bytes(spec: ModelSpec, e: int, tp: int = 1) -> int:
    """The hybrid engine's fused copies of a ZeRO-1/2 actor's weights, kept beside ZeRO's flat 16-bit buffer.

    DeepSpeed 0.10.3: ``HybridEngineContainer.initialize_tensors`` stores the policy's concatenated weights
    (``HYBRID_ENGINE_FUSED``); below ZeRO-3, ``set_attn_params_wo_copy`` / ``set_mlp_params_wo_copy``
    (containers/features/split_qkv.py, gated_mlp.py) point the parameters' ``.data`` at views of those copies,
    while ZeRO-1/2's flat buffer (``bit16_groups_flat``, the optimizer's) still holds the originals; after each
    step ``_update_model_bit16_weights`` points the parameters back at it and the hybrid engine's ``reset_params``
    copies them into the fused tensors again. Both stay resident. Llama-2-7B, bf16: (3·4,096² + 2·4,096·11,008)
    · 32 · 2 = 8,992,587,776 B. OPT adds its q, k, v biases. Under ZeRO-3 the engine uses the gathered parameters
    (no copy); a frozen weight (LoRA's base) is in no optimizer buffer, so re-pointing it frees its old storage
    (no copy either: ``dschat.hybrid_engine_workspace`` counts trained actors only)."""
    names = HYBRID_ENGINE_FUSED.get(spec.model_type, ())
    per_layer = sum(lin.count * lin.in_features * lin.out_features + (lin.out_features if spec.model_type == "opt"
                                                                        else 0)
                    for lin in spec.linears if lin.name in names)
    return per_layer * spec.num_layers * e // tp


def hybrid_engine_workspace_bytes(spec: ModelSpec, seqs: int, max_out_tokens: int, e: int, tp: int = 1) -> int:
    """DeepSpeed's inference workspace, allocated once by the first generation and kept in every phase.

    ``InferenceContext::GenWorkSpace`` (deepspeed 0.10.3 csrc/transformer/inference/includes/
    inference_context.h:98-182), T = ``hybrid_engine.max_out_tokens`` (DeepSpeed-Chat and ReMax pass
    prompt + answer; ``min_out_tokens`` = T, hybrid_engine.py:99-100, so it cannot shrink), d' = h/a padded
    to 32, 64 or 128 (kept when > 128), mp = inference tensor-parallel size:

        (10·a·d' + (a/mp)·T + 2·L·a·d'/mp) · T · b · e

    activations, attention scratch and the KV cache (``ds_softmax_context`` returns views of it,
    pt_binding.cpp:465-551). Raw ``cudaMalloc``, outside PyTorch's caching allocator (nvml sees it,
    ``torch.cuda.memory_allocated`` does not). Freed only with ``release_inference_cache``, default False
    (runtime/config.py:531; hybrid_engine.py:271-274). Llama-2-7B, T = 512, bf16: (40,960 + 16,384 +
    262,144) · 512 · 2 = 327,155,712 B = 312 MiB per sequence.
    """
    uniform_layers_only(spec, "DeepSpeed's hybrid engine", "model")
    a = spec.num_heads
    d = spec.hidden_size // a
    d_eff = d if d > 128 else 32 if d <= 32 else 64 if d <= 64 else 128
    activation = 10 * a * d_eff
    temp = (a // tp) * max_out_tokens
    cache = spec.num_layers * (a * d_eff // tp) * 2
    return (activation + temp + cache) * max_out_tokens * seqs * e


def hybrid_engine_cache_bytes(spec: ModelSpec, seqs: int, max_out_tokens: int, e: int, tp: int = 1) -> int:
    """The KV-cache part of ``hybrid_engine_workspace_bytes``: ``cache_size`` · T · e = 2·L·(a·d'/mp)·T·b·e
    (inference_context.h: ``cache_size``; every head, not only GQA's KV heads). Llama-2-7B, T = 512:
    268,435,456 B = 256 MiB per sequence."""
    a = spec.num_heads
    d = spec.hidden_size // a
    d_eff = d if d > 128 else 32 if d <= 32 else 64 if d <= 64 else 128
    return 2 * spec.num_layers * (a * d_eff // tp) * max_out_tokens * seqs * e


HYBRID_ENGINE_ROW_PARALLEL = ("out_proj", "fc2", "o_proj", "down_proj")
"""The linears whose input dimension the hybrid engine's tensor parallelism splits (attention output, MLP
output); the others (q, k, v, fc1 / up, gate) are split along their output dimension, bias included."""


def hybrid_engine_tp_layer_bytes(spec: ModelSpec, e: int, tp: int) -> int:
    """One decoder layer's weights as an inference container holds them under ZeRO-3 with ``inference_tp_size``
    = tp > 1: every linear's 1/tp slice, copied into a tensor of its own while the layer is gathered.

    DeepSpeed 0.9.0 (DeepSpeed-Chat's release; microsoft/DeepSpeed @47f9f13, "DeepSpeed Chat (#3186)")
    ``containers/base.py::apply_tensor_parallelism`` with ``ReplaceWithTensorSlicing(out_dim=0, in_dim=1)`` and
    ``allocat_tensor=True``: ``attention_q_k_v_mp`` copies rows [r·h/tp, (r+1)·h/tp) of q, k, v and their biases
    into ``torch.empty_like`` tensors of 1/tp; ``attention_o_mp`` and ``mlp_output_mp`` the o/fc2 weights'
    column slices; ``mlp_inter_mp`` fc1's rows and bias. The row-parallel biases (o, fc2) are whole
    (``ReplaceWithTensorSlicing.copy``: same shape, ``dst = src``), holding the gathered storage.

        e · (Σ in·out / tp + Σ column biases / tp + Σ row biases)       (biases: OPT only, here)

    OPT-13B (h = 5120, f = 20480), fp16, tp 2: (12·5120² / 2 + (3·5120 + 20480) / 2 + 2·5120) · 2 = 314,629,120 B.
    """
    weights = sum(lin.count * lin.in_features * lin.out_features for lin in spec.linears)
    column = row = 0
    if spec.model_type == "opt":
        for lin in spec.linears:
            if lin.name in HYBRID_ENGINE_ROW_PARALLEL:
                row += lin.count * lin.out_features
            else:
                column += lin.count * lin.out_features
    return e * (weights // tp + column // tp + row)


def hybrid_engine_non_tp_bytes(spec: ModelSpec, e: int) -> int:
    """What the hybrid engine gathers whole around ``_generate`` under ZeRO-3 with ``inference_tp_size`` > 1:
    every parameter outside the layers' linears — the embeddings (OPT's learned positions too), the final norm,
    an untied LM head and each layer's norms (deepspeed 0.10.3 runtime/hybrid_engine.py ``generate``:
    ``non_tp_params`` = the ``_other_layers``' parameters + ``layer_params[layer_id][:4]``, gathered with
    ``GatheredParameters`` for the whole call). e·(Ψ − L·Σ(in·out + bias)). OPT-13B, fp16: (12,853,473,280 −
    40 · 314,618,880) · 2 = 537,436,160 B."""
    bias = sum(lin.count * lin.out_features for lin in spec.linears) if spec.model_type == "opt" else 0
    linear = sum(lin.count * lin.in_features * lin.out_features for lin in spec.linears) + bias
    return e * (spec.num_params - spec.num_layers * linear)


def hybrid_engine_tp_gather_bytes(spec: ModelSpec, e: int, tp: int, partition: int, adapter_params: int = 0,
                                  fuse_bytes: int = 0) -> int:
    """Peak of the hybrid engine's gather-and-slice step under ZeRO-3 with ``inference_tp_size`` = tp > 1: the
    slices of the layers done so far beside one group of ``partition`` layers gathered whole.

    deepspeed 0.10.3 runtime/hybrid_engine.py ``generate``: ceil(L / ``tp_gather_partition_size``) groups
    (0.9.0: L // P), each gathered with ``GatheredParameters`` (the layers' parameters and their LoRA adapters,
    ``adapter_params`` per layer), LoRA fused into each weight (``fuse_lora``: ``param.data += scaling ·
    matmul(left.t(), right.t())``, a weight-sized product and its scaled copy: ``fuse_bytes``), each layer sliced
    (``hybrid_engine_tp_layer_bytes``), then the group released. After group k of n_k layers ending at layer
    end_k: end_k slices + n_k whole layers, or — fusing the group's last layer — one slice less plus the fuse:

        max_k  n_k · e·(layer + adapters) + max(end_k · S, (end_k − 1) · S + fuse)

    OPT-13B fp16, tp 2, P = 8, no LoRA: 40 · 314,629,120 + 8 · 629,278,720 = 17,619,394,560 B (16.41 GiB), against
    25.7 GB for the whole actor."""
    sliced = hybrid_engine_tp_layer_bytes(spec, e, tp)
    whole = e * (spec.layer_params + adapter_params)
    peak = 0
    for start in range(0, spec.num_layers, partition):
        n = min(partition, spec.num_layers - start)
        end = start + n
        peak = max(peak, n * whole + max(end * sliced, (end - 1) * sliced + fuse_bytes))
    return peak


def past_key_values_bytes(spec: ModelSpec, seq_len: int, seqs: int, e: int, tp: int = 1) -> int:
    """The ``past_key_values`` a transformers 4.31 forward returns: 2·L·k·d·s·b·e (``kv_cache_bytes``).

    ``use_cache`` defaults to ``config.use_cache`` = True (configuration_llama.py:118, modeling_llama.py:615)
    and is forced off only under gradient checkpointing in training (modeling_llama.py:658-663); each layer
    appends its K and V (modeling_llama.py:324, 704). DeepSpeed-Chat's and ReMax's make-experience forwards
    of the actor (train mode, checkpointing off outside the training block) and of the reference pass no
    ``use_cache``, so both outputs keep the cache until ``generate_experience`` returns. Llama-2-7B, s = 512:
    2 · 32 · 4096 · 512 · 2 = 268,435,456 B = 256 MiB per sequence.
    """
    return kv_cache_bytes(spec, seq_len, seqs, e, tp)


def hf_logits_element_bytes(spec: ModelSpec, e: int) -> int:
    """Bytes per element of the logits a transformers 4.31 causal LM returns: Llama upcasts every position's
    logits to fp32 (modeling_llama.py:825 ``logits = logits.float()``); OPT keeps the compute dtype
    (modeling_opt.py:956), as do GPT-2 and GPT-NeoX. Families newer than 4.31 upcast like Llama (4.3x)."""
    return e if spec.model_type in ("opt", "gpt2", "gpt_neox") else 4


def lm_head_logits_bytes(seqs: int, positions: int, vocab: int, element_bytes: int, tp: int = 1) -> int:
    """One [b, s, V] logits tensor over every position: b·s·V·bytes (DeepSpeed-Chat and ReMax take
    ``log_softmax`` over all positions, not the answer's). Llama-2-7B fp32, s = 512: 65,536,000 B = 62.5 MiB
    per sequence."""
    return seqs * positions * (vocab // tp) * element_bytes


def eager_attention_forward_bytes(seqs: int, heads: int, seq_len: int, e: int, tp: int = 1) -> int:
    """Eager attention in a no-grad forward, one layer: the scores (e), their fp32 softmax (4) and its cast
    back (e) alive at once: b·a·s²·(2e + 4) (transformers 4.31 has no SDPA path for Llama:
    modeling_llama.py:343-346 ``softmax(attn_weights, dtype=torch.float32).to(query_states.dtype)``).
    Llama-2-7B bf16, s = 512: 32 · 512² · 8 = 67,108,864 B = 64 MiB per sequence."""
    return seqs * (heads // tp) * seq_len * seq_len * (2 * e + 4)


def dschat_gather_log_probs_bytes(seqs: int, seq_len: int, vocab: int, element_bytes: int, tp: int = 1) -> int:
    """DeepSpeed-Chat's ``gather_log_probs(logits[:, :-1, :], seq[:, 1:])`` without autograd
    (dschat/rlhf/ppo_trainer.py, ``generate_experience``): the log-softmax output over s − 1 positions, and
    for b > 1 the contiguous copy CUDA's ``host_softmax`` makes of the non-contiguous slice (``input_.contiguous()``
    inside the kernel's op: read in source, not traceable on the CPU): (1 or 2)·b·(s−1)·V·bytes.
    Llama-2-7B fp32, s = 512, b = 1: 65,408,000 B = 62.4 MiB per sequence."""
    copies = 2 if seqs > 1 else 1
    return copies * seqs * (seq_len - 1) * (vocab // tp) * element_bytes


def remax_experience_temporaries_bytes(seqs: int, seq_len: int, vocab: int, element_bytes: int,
                                       tp: int = 1) -> int:
    """ReMax's make-experience post-processing over full logits (liziniu/ReMax remax_trainer.py @2cdfe70,
    ``generate_experience``): at ``full_kl = sum(probs * (lsm - lsm_ref))`` the actor's log-softmax, its
    ``exp``, the reference's log-softmax, their difference and the product are alive at once:
    5·b·s·V·bytes. Llama-2-7B fp32, s = 512: 327,680,000 B = 312.5 MiB per sequence."""
    return 5 * seqs * seq_len * (vocab // tp) * element_bytes


def dschat_logprob_backward_bytes(seqs: int, seq_len: int, vocab: int, element_bytes: int, *,
                                  logits_kept: bool, tp: int = 1) -> int:
    """The training log-prob path of DeepSpeed-Chat and ReMax at its backward peak:
    ``gather_log_probs(logits[:, :-1, :])``'s saved log-softmax output, gather's dense gradient and
    log-softmax's input gradient over s − 1 positions (3·b·(s−1)·V·bytes), plus the logits themselves over s
    positions when the trainer still holds them: DeepSpeed-Chat's ``train_rlhf`` keeps ``actor_prob`` until
    it returns; ReMax's ``compute_loss`` returns before backward (remax_trainer.py @2cdfe70), freeing them.
    Llama-2-7B fp32, s = 512: 196,224,000 B (ReMax) or 261,760,000 B (DeepSpeed-Chat) per sequence."""
    v = vocab // tp
    kept = seqs * seq_len * v * element_bytes if logits_kept else 0
    return 3 * seqs * (seq_len - 1) * v * element_bytes + kept


# --- Ulysses sequence parallelism and vocabulary-wide entropy -------------------------------------------------


def ulysses_saved_bytes_per_token(spec: ModelSpec, e: int, sp: int, *, weights_trainable: bool) -> float:
    """What one local token saves for backward in one decoder layer under Ulysses sequence parallelism (verl
    ``monkey_patch.py::_ulysses_flash_attention_forward``), beyond ``saved_bytes_per_token``.

    Each GPU holds T/sp tokens with every head outside attention; around flash attention an all-to-all
    (``ulysses.py::gather_seq_scatter_heads``) gives it every token of a/sp heads. Flash attention saves the
    gathered q, k, v and its output (per local token as many elements as unsplit: a·d, k'·d, k'·d, a·d), but

    * K and V are first repeated to k' = k · max(sp // k, 1) heads so that sp divides them (``repeat_kv``):
      2·e·(k' − k)·d more per local token when k < sp;
    * the output goes back through a second all-to-all (``gather_heads_scatter_seq``: ``torch.cat(...)
      .contiguous()``, a new tensor), which o_proj keeps for its weight's gradient beside flash's own copy:
      e·a·d more when the weights train.

    Llama-3-8B (a = 32, k = 8, d = 128), sp = 16, bf16: 2·2·8·128 + 2·32·128 = 12,288 B per local token.
    """
    uniform_layers_only(spec, "Ulysses sequence parallelism", "sequence_parallel")
    d, a, k = spec.head_dim, spec.num_heads, spec.num_kv_heads
    repeated = k * max(sp // k, 1) if sp > 1 else k
    out_copy = e * a * d if weights_trainable and sp > 1 else 0
    return 2 * e * (repeated - k) * d + out_copy


def ulysses_forward_transient_per_token(spec: ModelSpec, e: int, sp: int) -> float:
    """Peak bytes per local token inside one layer's no-grad forward at Ulysses' second all-to-all: the local q,
    k, v (e·d·(a + 2k)), the gathered ones (e·d·(a + 2k')), flash attention's output, the all-to-all's receive
    buffers and their ``torch.cat`` (3·e·a·d: ``ulysses.py::all_to_all_tensor``; its send chunks split the tokens of
    a contiguous [1, T, a/sp, d] output, so ``.contiguous()`` returns views, no copy), beside the residual stream
    and the norm's output and fp32 upcast (2·e·h + 4·h, as ``layer_forward_transient_per_token``):
    e·d·(5a + 2k + 2k') + 2·e·h + 4·h. The forward's peak is the larger of this and the MLP's. The attention part
    is traced (``memplan.harness.ulysses``, tests/test_trace_ulysses.py): e·d·(5a + 2k + 2k') per local token.

    Llama-2-7B (a = k = 32, d = 128, h = 4096), sp = 2, bf16: 2·128·288 + 4·4096 + 4·4096 = 106,496 B.
    """
    uniform_layers_only(spec, "Ulysses sequence parallelism", "sequence_parallel")
    d, a, k, h = spec.head_dim, spec.num_heads, spec.num_kv_heads, spec.hidden_size
    repeated = k * max(sp // k, 1)
    return e * d * (5 * a + 2 * k + 2 * repeated) + 2 * e * h + 4 * h


ENTROPY_CHUNK_ROWS = {"chunked": 128, "fp32-chunked": 2048}
"""Rows per chunk: TRL's ``trainer/utils.py::entropy_from_logits(chunk_size=128)``; verl's
``torch_functional.py::entropy_from_logits_with_chunking(chunk_size=2048)``."""


def fp32_chunked_entropy_backward_bytes(positions: int, v: int, e: int) -> int:
    """Peak of the backward of verl's ``entropy_from_logits_with_chunking`` over ``positions`` rows of ``v``
    columns (n chunks of C = 2048 rows, the last of r), beyond the logits; autograd runs the last chunk first.

    Each chunk saves its fp32 copy and fp32 softmax (8·v per row). Its backward, at ``logsumexp_backward``
    (torch ``tools/autograd/derivatives.yaml``: ``grad * (self - result).exp()``, whose two temporaries live to
    the end of that C++ expression), holds the product's two gradients (``mul.Tensor``: ∂pd and ∂z), z − lse, its
    exp and the product: 5 fp32 [rows, v] (20·v per row). The chunk's slice (``logits[i:i + 2048]``) goes back
    through ``slice_backward``: a zero-filled e·v·T gradient of the whole logits, into which the next chunks'
    are summed. Three moments, the largest counts:

    * the last chunk: every chunk's saved tensors and its temporaries, 8·v·T + 20·v·r;
    * the chunk before it: the saved tensors of the chunks left, the whole-logits gradient, its temporaries,
      8·v·(n − 1)·C + e·v·T + 20·v·C;
    * that chunk's ``slice_backward``: a second zero-filled e·v·T beside the first and its e·v·C chunk,
      8·v·(n − 2)·C + 2·e·v·T + e·v·C.

    One chunk (T ≤ 2048) is not sliced (``logits[0:T]`` returns the logits themselves): 28·v·T.
    Qwen2.5-0.5B (v = 151,936), T = 3,072, bf16: n = 2, r = 1,024; 45,056·v, 63,488·v, 16,384·v:
    63,488 · 151,936 = 9,646,112,768 B (traced: the same, beside the logits).
    """
    c = ENTROPY_CHUNK_ROWS["fp32-chunked"]
    n = -(-positions // c)
    if n <= 1:
        return 28 * v * positions
    last = positions - (n - 1) * c
    return max(8 * v * positions + 20 * v * last,
               8 * v * (n - 1) * c + e * v * positions + 20 * v * c,
               8 * v * (n - 2) * c + 2 * e * v * positions + e * v * c)


def entropy_bytes(positions: int, vocab: int, e: int, *, training: bool, kernel: str, tp: int = 1) -> int:
    """The entropy over the vocabulary of ``positions`` logits rows (``e`` bytes each), beyond the logits
    themselves (``entropy_beside_logprobs_bytes`` says who keeps them): at its peak without autograd, or at its
    backward's peak with what it saved (autograd runs the entropy's backward before the log-probs', which
    verl computes first: ``dp_actor.py::_forward_micro_batch``).

    * 'compiled' — verl's ``entropy_from_logits`` (``softmax``, ``logsumexp``, ``sum(pd * logits)``) under
      ``torch.compile`` (dp_actor.py: ``use_torch_compile``, default True): one fused reduction, the fp32 entropy
      per position (4). In the update the compiled backward writes the entropy's gradient of the logits (e·V).
    * 'eager' — the same uncompiled: the softmax (e·V) beside the logsumexp's ``exp`` or the product ``pd *
      logits`` (e·V): 2·e·V. In the update autograd saves the softmax (``_softmax`` keeps its result) and the
      logits; backward (torch ``derivatives.yaml``) runs the product's node first (``mul.Tensor``: ∂pd = g·z and
      ∂z = g·pd, both waiting for their consumers), then ``logsumexp_backward``'s ``grad * (self - result).exp()``
      (z − lse, its exp and the product, alive to the end of the C++ expression): 6·e·V (traced).
    * 'chunked' — TRL's ``entropy_from_logits`` over 128-row chunks: ``log_softmax``, ``exp`` and their product
      in the logits' dtype, one chunk at a time (3·e·V·128). With grad (TRL's entropy bonus) every chunk's
      ``logps`` and ``exp(logps)`` are saved (2·e·V per position) and backward builds the logits' gradient
      (e·V): 3·e·V.
    * 'fp32-chunked' — verl's ``entropy_from_logits_with_chunking``: each 2048-row chunk cast to fp32, its
      softmax and product (12·V·2048). With grad: ``fp32_chunked_entropy_backward_bytes``; and the fp32 [T]
      entropy it writes into (4).

    ``entropy_checkpointing`` (verl) drops what the entropy saves during the layers' backward, but recomputes it
    at the loss, where memplan places the update's peak: the same bytes.
    Qwen2.5-0.5B (V = 151,936), 4,096 positions, bf16, 'eager' no grad: 2·2·151,936·4,096 = 2,489,319,424 B.
    """
    v = vocab // tp
    if kernel == "compiled":
        return positions * (e * v + 4) if training else positions * 4
    if kernel == "eager":
        return positions * (6 if training else 2) * e * v
    if kernel == "chunked":
        if training:
            return positions * 3 * e * v
        return 3 * e * v * min(positions, ENTROPY_CHUNK_ROWS[kernel]) + positions * 4
    if kernel == "fp32-chunked":
        if training:
            return fp32_chunked_entropy_backward_bytes(positions, v, e) + positions * 4
        return 12 * v * min(positions, ENTROPY_CHUNK_ROWS[kernel]) + positions * 4
    raise ValueError(kernel)


ENTROPY_SAVES_LOGITS = {"compiled": True, "eager": True, "chunked": False, "fp32-chunked": False}
"""Whether the entropy's graph keeps the logits it reads: ``logsumexp`` and ``mul`` save their input (a compiled
graph's backward takes it as input); TRL's ``log_softmax`` saves its output, verl's chunks their fp32 copies."""
LOGPROB_HELD_PER_POSITION = {"log-softmax": (4, 4), "fused": (8, 8), "fp32-fused": (20, 16)}
"""What the log-prob path holds beyond the logits while the entropy runs, per position: (scoring, training) bytes
and, in training, 4·V more for 'log-softmax' (the fp32 log-softmax it saved). Scoring, after its own peak: the
fp32 log-prob (4); the fused kernel's fp32 log-prob and log-sum-exp (8); OpenRLHF's three fp32 kernel outputs and
int64 label (20). Training: what each saved for backward (``fused_logprob_bytes``, ``fp32_fused_logprob_bytes``)."""


def entropy_beside_logprobs_bytes(positions: int, vocab: int, e: int, *, training: bool, kernel: str,
                                  logprob_kernel: str, logprob_bytes: int, tp: int = 1) -> int:
    """What the entropy of ``positions`` logits rows adds to the log-prob path's peak ``logprob_bytes`` (its
    formula, e.g. ``logprob_logits_bytes``), ``e`` the logits' bytes per element. Each is a moment of its own:

    * scoring — verl takes the entropy after the log-probs (``dp_actor.py::_forward_micro_batch``), so the
      log-softmax's fp32 copies are gone: the logits (e·V), what the log-prob path keeps
      (``LOGPROB_HELD_PER_POSITION``) and the entropy's own peak;
    * training, in the entropy's backward (it runs first: its nodes are the newer) — the logits where either
      saved them, what the log-prob path saved, and ``entropy_bytes``' backward peak;
    * training, in the log-prob path's backward — its own peak, the entropy's gradient of the logits waiting in
      their input buffer (e·V) and, for verl's fused cross-entropy, the gradient it writes out of place when the
      entropy reads the logits too (dp_actor.py: ``inplace_backward = False``; e·V).

    The entropy adds the largest moment less ``logprob_bytes`` (0 when the log-prob path's peak is larger). A
    chunked LM head has no logits to share: there the entropy's bytes are added.
    Qwen2.5-0.5B (V = 151,936) scoring, 512 positions, bf16, log-softmax and 'eager': max(10·V, 2·V + 4 + 4·V)
    per position, the log-softmax's: 0. The update, fused kernel: max(2·V + 8, 2·V + 8 + 12·V, 6·V + 8) − (2·V +
    8) = 12·V per position.
    """
    ent = entropy_bytes(positions, vocab, e, training=training, kernel=kernel, tp=tp)
    if logprob_kernel not in LOGPROB_HELD_PER_POSITION:
        return ent
    v = vocab // tp
    logits = positions * e * v
    held = positions * LOGPROB_HELD_PER_POSITION[logprob_kernel][training]
    if not training:
        return max(0, logits + held + ent - logprob_bytes)
    if logprob_kernel == "log-softmax":
        held += positions * 4 * v
    kept = logits if logprob_kernel != "log-softmax" or ENTROPY_SAVES_LOGITS[kernel] else 0
    during = kept + held + ent
    after = logprob_bytes + logits + (positions * e * v if logprob_kernel == "fused" else 0)
    return max(0, during - logprob_bytes, after - logprob_bytes)


# --- Ring attention (OpenRLHF ``--ds.ring_attn_size``) -------------------------------------------------------------
# OpenRLHF @3c3be62 ``models/ring_attn_utils.py`` slices the packed row over the ring group (sp GPUs, each
# ceil(T/sp) tokens: ``tokens.micro_batch``) and ``utils/deepspeed/deepspeed.py::setup_ring_attn`` swaps HF's flash
# attention for ring-flash-attention @8996282 ``adapters/hf_adapter.py`` → ``llama3_flash_attn_varlen_func``. That
# kernel saves what flash attention saves (``ctx.save_for_backward(q, k, v, out, softmax_lse)``: the local q, the
# contiguous k and v, the concatenated output — per local token as many bytes as unsplit), so the saved activations
# follow the local tokens and add nothing; what it adds are transients, per local token t, with s = heads_k_stride.


def ring_forward_transient_per_token(spec: ModelSpec, e: int, sp: int, stride: int, tp: int = 1) -> float:
    """Peak bytes per local token inside one layer's no-grad forward under OpenRLHF's ring attention, at
    ``llama3_flash_attn_varlen_forward``'s ``torch.cat(out_list)`` (its locals all alive):

    * the local q, k, v (e·d·(a + 2k)) and ``Llama3FlashAttnVarlenFunc.forward``'s ``k.contiguous()`` (e·d·k: HF's
      ``flash_attention_forward`` hands ``key.transpose(1, 2)`` of the RoPE output, not contiguous; v's double
      transpose is);
    * ``kv_buffer`` and ``kv_buffer_copy``, each ``(2, total_k · world_size, heads_k_stride, d)``: every token of
      the ring for s KV heads, K and V, double-buffered: 4·e·sp·s·d;
    * with s < k, the sliced send chunks ``k_0``, ``v_0`` and the last ``send_k``, ``send_v`` (``.contiguous()``
      copies of [t, s, d]): 4·e·s·d;
    * ``out_list`` and its ``torch.cat`` (2·e·a·d), ``lse_list`` and its cat in fp32 (8·a);
    * beside the residual stream and the norm's output and fp32 upcast (2·e·h + 4·h, as
      ``ulysses_forward_transient_per_token``).

    e·d·(3a + 3k + 4·sp·s + [4s if s < k]) + 8a + 2·e·h + 4·h. The forward's peak is the larger of this and the
    MLP's.
    The attention part is traced (``memplan.harness.ring``, tests/test_ring_attention.py): the same, to the byte.
    Llama-3-8B (a = 32, k = 8, d = 128, h = 4096), sp = 4, s = 1, bf16: 256·140 + 256 + 16,384 + 16,384 = 68,864 B.
    """
    uniform_layers_only(spec, "ring attention", "sequence_parallel")
    d, a, k, h = spec.head_dim, spec.num_heads // tp, max(spec.num_kv_heads // tp, 1), spec.hidden_size  # per GPU
    chunks = 4 * stride if stride < k else 0
    return e * d * (3 * a + 3 * k + 4 * sp * stride + chunks) + 8 * a + 2 * e * h + 4 * h


def ring_backward_transient_per_token(spec: ModelSpec, e: int, sp: int, stride: int, tp: int = 1) -> float:
    """Peak bytes per local token inside one layer's backward under OpenRLHF's ring attention, at the last
    chunk's ``_flash_attn_varlen_backward`` in ``llama3_flash_attn_varlen_backward``:

    * the incoming gradient of the attention output (e·a·d) and ``dq``, ``dk``, ``dv`` (``torch.empty_like`` of the
      local q, k, v: e·d·(a + 2k));
    * ``kv_buffer``, ``kv_buffer_copy`` (the K/V all-gather, double-buffered) and ``dkv_buffer`` (their gradient,
      reduce-scattered back): three ``(2, total_k · world_size, s, d)``, 6·e·sp·s·d;
    * with s < k, ``kv_contiguous_buffer`` ``(2, total_k, s, d)`` and the send chunks as in forward (4·e·s·d),
      and, from k/s ≥ 3 on, a new ``send_k`` made while the previous one is still bound: 6·e·s·d, or 7·e·s·d;
    * beside the layer's incoming gradient in the residual stream (e·h).

    e·d·(2a + 2k + 6·sp·s + [6s or 7s if s < k]) + e·h (traced: tests/test_ring_attention.py, memplan.harness.ring);
    a layer's backward peak is the larger of this and the MLP's
    (``backward_transient_per_token``). Llama-3-8B, sp = 8, s = 8 (every KV head at once), bf16:
    256·(64 + 16 + 384) + 8,192 = 126,976 B (the MLP's: 2·2·14,336 + 8,192 = 65,536 B).
    """
    uniform_layers_only(spec, "ring attention", "sequence_parallel")
    d, a, k, h = spec.head_dim, spec.num_heads // tp, max(spec.num_kv_heads // tp, 1), spec.hidden_size  # per GPU
    chunks = 0 if stride >= k else (7 if k // stride >= 3 else 6) * stride
    return e * d * (2 * a + 2 * k + 6 * sp * stride + chunks) + e * h
