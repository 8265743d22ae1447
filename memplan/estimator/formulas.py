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

from memplan.specs import ModelSpec

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
QUANT_BYTES_PER_PARAM = {"int8": 1.0 + 4 / 4096, "int4": 0.5 + 0.127 / 8}
"""bitsandbytes: LLM.int8 keeps one fp32 scale per row (≈4/h bytes per weight); NF4 with double
quantization costs 4.127 bits per weight (Dettmers et al. 2023, QLoRA, §2)."""

ALLOC_BLOCK = 512
"""The CUDA caching allocator rounds every block up to 512 bytes."""

GATED_ACTS = {"llama", "mistral", "qwen2", "qwen3", "mixtral", "phi3", "gemma", "gemma2", "qwen2_moe", "qwen3_moe"}
LAYERNORM_FAMILIES = {"opt", "gpt2", "gpt_neox"}


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
    return spec.num_layers * sum(lin.count * lin.in_features * lin.out_features for lin in spec.linears)


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
    """KV cache: 2 (K and V) · L · k · d · tokens · sequences · e, split over tensor-parallel ranks by KV head."""
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
    h, a, k, d, f = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.intermediate_size
    a_t, k_t, f_t = a / tp, max(1, k // tp), f / tp
    layernorm = spec.model_type in LAYERNORM_FAMILIES
    linear_in = weights_trainable  # a frozen linear keeps no input for its weight gradient

    def norm(out_read_by_linears: bool) -> float:
        if layernorm:  # native layer_norm saves its input (e·h) and fp32 mean/rstd
            saved = e * h + 8
        else:  # fp32 upcast, plus the normalized tensor the weight multiply keeps
            saved = 4 * h + (e * h if weights_trainable else 0)
            if spec.model_type in ("gemma", "gemma2"):  # Gemma normalizes and scales in fp32
                saved = 4 * h + (4 * h if weights_trainable else 0)
        return saved + (e * h if out_read_by_linears else 0)

    adapted = [lin for lin in spec.linears if lora_rank and (lora_targets == "all-linear" or lin.attention)]
    lora_bf16_reads_norm = bool(adapted) and lora_dtype_bytes == e
    pre_norms = 2 * norm(linear_in or lora_bf16_reads_norm)
    post_norms = 0.0
    if spec.model_type == "gemma2":  # post-attention and post-feedforward norms feed the residual add
        post_norms = 2 * norm(False)

    attention = e * (2 * a_t * d + 2 * k_t * d) + 4 * a_t
    if spec.model_type == "qwen3":  # per-head q_norm and k_norm
        attention += (4 + (e if weights_trainable else 0)) * (a_t + k_t) * d

    if spec.num_experts:
        topk = spec.experts_per_token
        mlp = topk * (3 * e * f + (e * f if linear_in else 0) + e * h) + 4 * spec.num_experts
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
            if lora_dtype_bytes == e and lin.name in ("down_proj", "fc2", "dense_4h_to_h", "c_proj", "w2"):
                input_copy = e * lin.in_features  # the down projection's input, kept for lora_A
            lora += copies * (input_copy + lora_dtype_bytes * lora_rank)

    scores = (4 + e) * a_t * seq_len if eager_attention else 0.0
    return LayerActivation(base=pre_norms + post_norms + attention + mlp, lora=lora, attention_scores=scores)


def layer_forward_transient_per_token(spec: ModelSpec, e: int, tp: int = 1) -> float:
    """Peak extra bytes per token inside one layer's forward without autograd (rollout prefill, scoring).

    The largest moment is the MLP: gate, up and act(gate) alive at once (3·e·f), next to the residual and
    the fp32 norm upcast (2·e·h + 4h).
    """
    h, f = spec.hidden_size, spec.intermediate_size / tp
    width = f * (spec.experts_per_token if spec.num_experts else 1)
    mlp = (3 if spec.model_type in GATED_ACTS else 2) * e * width
    return mlp + 2 * e * h + 4 * h


def logprob_logits_bytes(tokens: int, vocab: int, e: int, training: bool, tp: int = 1) -> int:
    """Peak of the log-prob path over ``tokens`` positions: ``log_softmax(logits.float()).gather(ids)``.

    Scoring (no autograd): bf16 logits, their fp32 copy and the fp32 log-softmax alive at once: (e + 8)·V.
    Training: the forward keeps the fp32 log-softmax (4V); backward of log-softmax holds its output, the
    incoming gradient (gather's dense backward) and its result at once: 3 · 4V per token.
    """
    v = vocab / tp
    per_token = 12 * v if training else (e + 8) * v
    return int(tokens * per_token)
