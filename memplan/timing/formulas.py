"""One plain function per time term: FLOPs, bytes, and the seconds they take at an achievable rate.

Shape letters: b sequences, s tokens per sequence, h hidden size, L layers, a·d = query heads × head dim,
P the parameters a token passes through as matmuls (every decoder layer's linears, and the LM head when the
model makes vocabulary logits; embeddings are a lookup), Ψ a model's parameters, e bytes per 16-bit element,
n GPUs in a collective.

FLOPs (Kaplan et al. 2020, arXiv 2001.08361 §2.1; PaLM, Chowdhery et al. 2022, arXiv 2204.02311 App. B):
a forward takes 2·P FLOPs per token plus attention's 4·L·(a·d)·s per token (QKᵀ and the weighted sum over
all s positions, as eager and SDPA math kernels compute them); backward twice the forward; a recomputed
forward (gradient checkpointing) once more.
"""

from __future__ import annotations

from math import ceil

from memplan.specs import ModelSpec, layer_views
from memplan.timing.hardware import (
    ADAM_BYTES_PER_PARAM, BUS_EFFICIENCY, DECODE_HBM_EFFICIENCY,
    GPU_STREAM_EFFICIENCY, HOST_MEMORY_EFFICIENCY, MATMUL_EFFICIENCY, PCIE_EFFICIENCY, GPUPerf,
)

OPTIMIZER_BYTES_PER_PARAM = {"adamw": ADAM_BYTES_PER_PARAM, "adamw-8bit": 18, "sgd": 22, "adafactor": 22}
"""Bytes an optimizer step streams per parameter. AdamW: ``ADAM_BYTES_PER_PARAM`` (30). 8-bit Adam: reads the
fp32 master and gradient and the int8 m and v (10), writes master, m and v (6) and the 16-bit weight (2): 18.
SGD with momentum, and Adafactor (its factored second moment is negligible): reads master, gradient and one
state (12), writes master and state (8) and the 16-bit weight (2): 22."""


def matmul_params(spec: ModelSpec, lm_head: bool) -> int:
    """P: parameters a token multiplies through — each layer's linears (MoE: only the ``experts_per_token``
    experts a token is routed to; layers of different shapes, Gemma-4's, group by group) and the LM head (V·h)
    for models that make logits; a scalar head's h."""
    total = 0
    for view in layer_views(spec):
        per_layer = 0
        for lin in view.linears:
            count = lin.count
            if spec.num_experts and count == spec.num_experts:
                count = spec.experts_per_token
            per_layer += lin.in_features * lin.out_features * count
        total += per_layer * view.num_layers
    head = spec.vocab_size * spec.hidden_size if lm_head else spec.hidden_size
    return total + head


def attention_width(spec: ModelSpec) -> int:
    """Σ over layers of a·d, the query width attention multiplies per token pair (L·a·d for uniform layers;
    Gemma-4's groups each with their own head dim). Sliding windows are not taken off."""
    return sum(view.num_layers * view.num_heads * view.head_dim for view in layer_views(spec))


def forward_flops(spec: ModelSpec, lm_head: bool, seq_len: int, seqs: int) -> float:
    """One forward over ``seqs`` sequences of ``seq_len`` tokens: b·(2·P·s + 4·L·(a·d)·s²)."""
    attn = 4 * attention_width(spec) * seq_len * seq_len
    return float(seqs) * (2 * matmul_params(spec, lm_head) * seq_len + attn)


def token_forward_flops(spec: ModelSpec, lm_head: bool, tokens: int, span: int) -> float:
    """One forward over ``tokens`` tokens of sequences ``span`` tokens long: tokens·(2·P + 4·L·(a·d)·span) — the
    same as ``forward_flops(spec, lm_head, span, tokens / span)``. Packed sequences (flash-attn's varlen kernel,
    ``cu_seqlens``) attend within their own sequence: ``span`` is a sequence's length, not the packed row's."""
    return float(tokens) * (2 * matmul_params(spec, lm_head) + 4 * attention_width(spec) * span)


def ulysses_all_to_all_bytes(spec: ModelSpec, tokens: int, sp: int, kv_heads: int, e: int) -> float:
    """Bytes one GPU sends in one layer's Ulysses all-to-alls of a forward over its ``tokens`` local tokens (verl
    ``monkey_patch.py::_ulysses_flash_attention_forward``: ``gather_seq_scatter_heads`` on q, k and v, then
    ``gather_heads_scatter_seq`` on the attention output — 4 all-to-alls; ``ulysses.py::SeqAllToAll.backward``
    runs each once more on the gradient in backward). Each moves the local tokens' q (a·d), k and v
    (``kv_heads``·d each, after ``repeat_kv`` up to sp heads) or output (a·d) elements, sending (sp − 1)/sp of
    them to the other GPUs: tokens·(2·a + 2·kv)·d·e·(sp − 1)/sp."""
    if sp <= 1:
        return 0.0
    return float(tokens) * (2 * spec.num_heads + 2 * kv_heads) * spec.head_dim * e * (sp - 1) / sp



def ring_all_gather_bytes(spec: ModelSpec, tokens: int, sp: int, kv_heads: int, e: int) -> float:
    """Bytes one GPU receives (and, in a ring all-gather, sends) when OpenRLHF's ring attention gathers K and V of
    ``kv_heads`` heads over its sp GPUs for its ``tokens`` local tokens: ring-flash-attention
    ``llama3_flash_attn_varlen.py::llama3_flash_attn_varlen_forward`` calls ``all_gather_into_tensor`` on the local
    K slice and the V slice (``[t, heads_k_stride, d]`` each, into ``kv_buffer``'s ``[t · sp, heads_k_stride, d]``)
    once per ``heads_k_stride`` KV heads, so a layer's forward moves (sp − 1)·t·2k·d·e over all k KV heads;
    ``llama3_flash_attn_varlen_backward`` gathers them again and ``reduce_scatter_tensor``s ``dkv_buffer`` (the same
    shape): as many bytes again. Pass ``kv_heads`` = the stride for one chunk, k for the whole layer."""
    if sp <= 1:
        return 0.0
    return float(sp - 1) * tokens * 2 * kv_heads * spec.head_dim * e

def train_flops_factor(checkpointing: bool, lora: bool) -> int:
    """Forwards' worth of FLOPs in one training pass: forward 1 + backward 2 (input and weight gradients) +
    1 recomputed forward under checkpointing. LoRA skips the frozen base's weight gradients: backward ≈ 1."""
    return 1 + (1 if lora else 2) + (1 if checkpointing else 0)


def compute_seconds(flops: float, perf: GPUPerf, dtype: str, tp: int = 1) -> float:
    """Matmul time at ``MATMUL_EFFICIENCY`` of the dense peak, the work split over ``tp`` GPUs."""
    return flops / tp / (perf.matmul_flops(dtype) * MATMUL_EFFICIENCY)


def kv_bytes_per_token(spec: ModelSpec, e: int) -> int:
    """Key and value of one token in every layer that caches its own: 2·L·kv_heads·d·e (Gemma-4's KV-shared
    layers read an earlier layer's; sliding windows are not taken off)."""
    return sum(2 * view.num_layers * view.num_kv_heads * view.head_dim * e for view in layer_views(spec)
               if view.layer_group is None or view.layer_group.kv_source)


def decode_step_seconds(weight_bytes: float, kv_bytes: float, flops: float, perf: GPUPerf, dtype: str,
                        launch_seconds: float = 0.0) -> tuple[float, str]:
    """One decode step of the whole batch: bounded by reading the weights and the KV cache from HBM once
    (at ``DECODE_HBM_EFFICIENCY``), by its FLOPs, and — without CUDA graphs — by launching its kernels
    (``launch_seconds``: ``launches.decode_launch_seconds``). Returns the seconds and which bound it is."""
    bounds = {
        "hbm": (weight_bytes + kv_bytes) / (perf.hbm_bytes_per_s * DECODE_HBM_EFFICIENCY),
        "compute": flops / (perf.matmul_flops(dtype) * MATMUL_EFFICIENCY),
        "launch": launch_seconds,
    }
    bound = max(bounds, key=bounds.__getitem__)
    return bounds[bound], bound


def shard_collective_bytes(total_bytes: float, n: int) -> float:
    """Bytes each GPU sends in an all-gather or a reduce-scatter of a ``total_bytes`` tensor over n GPUs
    (ring: (n − 1)/n of it); an all-reduce is a reduce-scatter plus an all-gather, twice this."""
    return total_bytes * (n - 1) / n if n > 1 else 0.0


def bus_seconds(bytes_per_gpu: float, perf: GPUPerf, multi_node: bool) -> float:
    """A collective's time at ``BUS_EFFICIENCY`` of the slowest link (network across nodes, else NVLink)."""
    if bytes_per_gpu <= 0:
        return 0.0
    return bytes_per_gpu / (perf.bus_bytes_per_s(multi_node) * BUS_EFFICIENCY)


def pcie_seconds(nbytes: float, perf: GPUPerf) -> float:
    """Host↔device copy at ``PCIE_EFFICIENCY`` of the link (one direction)."""
    return nbytes / (perf.pcie_bytes_per_s * PCIE_EFFICIENCY)


def offload_transfer_seconds(params: float, e: int, perf: GPUPerf) -> float:
    """The PCIe traffic of one offloaded optimizer step for a rank's ``params``: its gradients go down as fp32
    (4 bytes: DeepSpeed's ZeRO-1/2 ``stage_1_and_2.py::async_inplace_copy_grad_to_fp32_buffer_from_gpu`` and
    ZeRO-3's ``stage3.py`` cast ``param.grad`` with ``.float()`` on the GPU before the copy, unless
    ``fp16_master_weights_and_gradients``), the updated weights come back in the e-byte training dtype. Both
    directions of the link run at once only across different steps, so they are added."""
    return pcie_seconds(params * (4 + e), perf)


def gpu_optimizer_seconds(params: float, perf: GPUPerf, optimizer: str = "adamw") -> float:
    """A fused optimizer step on the GPU: memory-bound, its bytes per parameter at ``GPU_STREAM_EFFICIENCY``."""
    return params * OPTIMIZER_BYTES_PER_PARAM[optimizer] / (perf.hbm_bytes_per_s * GPU_STREAM_EFFICIENCY)


def cpu_optimizer_seconds(params_on_node: float, perf: GPUPerf, optimizer: str = "adamw") -> float:
    """DeepSpeedCPUAdam / FSDP's CPU step: every rank of a node steps its partition at once, so the node's
    DRAM bandwidth (at ``HOST_MEMORY_EFFICIENCY``) bounds them together."""
    return params_on_node * OPTIMIZER_BYTES_PER_PARAM[optimizer] / (
        perf.host_memory_bytes_per_s * HOST_MEMORY_EFFICIENCY)


def calls(seqs: int, per_call: int) -> int:
    """Forward calls to go through ``seqs`` sequences ``per_call`` at a time."""
    return max(1, ceil(seqs / max(1, per_call)))
