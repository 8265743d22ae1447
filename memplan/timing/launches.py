"""Kernel launches per decoder layer and decode token: the launch floor of a decode step without CUDA graphs.

A decode step of one token through L layers run op by op from Python (no CUDA graph) cannot finish before its
kernels are launched: L × (kernels per layer) × (seconds per launch). The seconds per launch come from the one
measured eager decode memplan holds (``hardware.EAGER_DECODE_SECONDS_PER_LAYER``: gpt-fast's eager Llama-2-7B,
1.23 ms per layer) divided by the kernels that layer launches (``EAGER_LAYER_LAUNCHES``); each engine then
charges its own count:

* ``hf`` (transformers' eager layers): the measured figure itself, unchanged (``EAGER_LAYER_LAUNCHES`` kernels).
* ``hybrid-engine`` (DeepSpeed-Chat): ``DeepSpeedHybridEngine.generate`` (``deepspeed/runtime/hybrid_engine.py``)
  runs HF's ``generate`` with every decoder layer's forward replaced by ``DeepSpeedTransformerInference.forward``
  (``model_implementations/transformers/ds_transformer.py``), a handful of fused ops, each one C++ call
  (``csrc/transformer/inference/csrc/pt_binding.cpp``) launching the kernels counted in ``hybrid_engine_ops``.
  No CUDA graph: ``HybridEngineConfig`` (``runtime/config.py``) has no such field and ``new_inference_container``
  builds its ``DeepSpeedInferenceConfig`` without ``enable_cuda_graph`` (default False); DeepSpeed-Chat's
  ``get_train_ds_config`` (``dschat/utils/ds_utils.py``) sets only enabled, max_out_tokens, inference_tp_size,
  release_inference_cache, pin_parameters, tp_gather_partition_size.
* ``vllm`` (CUDA graphs) and ``remote``: no floor.

Sources read: microsoft/DeepSpeed @38327e0 (2025-02-21), microsoft/DeepSpeedExamples (DeepSpeed-Chat),
pytorch-labs/gpt-fast @32971d3 ``model.py``. Not counted: cuBLAS may split one GEMM into two kernels (split-K) at
small batch; the Python between DeepSpeed's ops is charged as if each kernel were one eager op; HF ``generate``'s
per-token work outside the layers (embedding, final norm, LM head, sampling) is spread over the layers as in the
eager figure. Model families other than Llama and OPT fall back to the eager count (DeepSpeed has hybrid
containers for BLOOM, GPT-J, GPT-Neo, GPT-NeoX, InternLM too, not counted here).
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.specs import ModelSpec
from memplan.timing.hardware import EAGER_DECODE_SECONDS_PER_LAYER

EAGER_LAYER_LAUNCHES = 51
"""Kernels one eager gpt-fast ``TransformerBlock`` (``model.py``; the layer behind
``EAGER_DECODE_SECONDS_PER_LAYER``) launches for one decode token: the non-view ATen operators it dispatches,
traced with a ``TorchDispatchMode`` (torch 2.13, bf16, batch 1, one token after a 10-token prefill; views and
``_unsafe_view`` left out): RMSNorm 7 (``_to_copy``, mul, mean, add, rsqrt, mul, ``_to_copy``) + weight mul 1,
wqkv 1, rotary 10 per q and k (20), KV-cache ``index_put_`` 2, ``repeat_interleave`` clones 2, the boolean
mask's ``scalar_tensor`` ×2 + where 3, SDPA 1, wo 1, residual add 1, RMSNorm 8, w1 + silu + w3 + mul + w2 5,
residual add 1. (On CUDA the two ``scalar_tensor`` may stay on the host: 49.) transformers 5.25's eager
``LlamaDecoderLayer`` dispatches 46 the same way, so the ``hf`` engine's floor is this layer's within 10 %."""

SECONDS_PER_LAUNCH = EAGER_DECODE_SECONDS_PER_LAYER / EAGER_LAYER_LAUNCHES
"""1.225 ms / 51 = 24.0 µs per kernel launched from an eager decode loop."""


@dataclass(frozen=True, kw_only=True, slots=True)
class OpLaunches:
    """One op of a decoder layer's decode forward and the kernels it launches."""

    op: str
    """The op as its source names it."""
    kernels: int
    """CUDA kernels it launches per call (cuBLAS calls counted as one)."""
    source: str
    """File and function that launch them."""


_PT = "pt_binding.cpp"


def hybrid_engine_ops(model_type: str, zero3: bool = False, tp: int = 1) -> tuple[OpLaunches, ...] | None:
    """The ops ``DeepSpeedTransformerInference.forward`` runs per layer for one decode token under the hybrid
    engine, Llama (``containers/llama.py``: RMSNorm, rotate-half rotary, gated SiLU MLP, no biases) or OPT
    (``containers/opt.py``: LayerNorm, biases, ReLU, no rotary); None for another family. ``zero3``: the
    containers leave q, k, v (and Llama's up and gate) unfused (``features/split_qkv.py`` /
    ``gated_mlp.py::set_*_params_wo_copy(Z3_enabled)``), so every forward copies them into one buffer first
    (``ds_attention.py::_merge_qkv``, ``ds_mlp.py::_merge_inter_w``). ``tp`` > 1: one all-reduce after the
    attention and one after the MLP (``ds_attention.py::forward``, ``ds_mlp.py::forward``)."""
    if model_type not in ("llama", "opt"):
        return None
    llama = model_type == "llama"
    ops = []
    if zero3:
        ops.append(OpLaunches(op="_merge_qkv", kernels=3 if llama else 6,
                              source="ds_attention.py::_merge_qkv (q, k, v weights; OPT also their biases)"))
        if llama:
            ops.append(OpLaunches(op="_merge_inter_w", kernels=2,
                                  source="ds_mlp.py::_merge_inter_w (up and gate weights)"))
    ops += [
        OpLaunches(op="qkv_gemm", kernels=2 if llama else 3,
                   source=f"op_binding/qkv_gemm.py → {_PT}::ds_rms_qkv (launch_rms_norm, cublas_gemm_ex) / "
                          "qkv_unfused_cublas (launch_fused_ln, cublas_gemm_ex, launch_bias_add)"),
        OpLaunches(op="softmax_context", kernels=6 if llama else 5,
                   source=f"op_binding/softmax_context.py → {_PT}::ds_softmax_context "
                          "(launch_bias_add_transform_0213, launch_apply_rotary_pos_emb when rotate_half, attention_unfused: two "
                          "cublas_strided_batched_gemm around launch_attn_softmax_v2, launch_transform4d_0213)"),
        OpLaunches(op="vector_matmul", kernels=1,
                   source=f"op_binding/vector_matmul.py → {_PT}::ds_vector_matmul (cublas_gemm_ex: o_proj)"),
        OpLaunches(op="mlp_gemm", kernels=4,
                   source=f"op_binding/mlp_gemm.py → {_PT}::ds_rms_mlp_gemm (launch_rms_norm with the residual, "
                          "cublas_gemm_ex, launch_gated_activation, cublas_gemm_ex) / mlp_unfused_cublas "
                          "(launch_fused_residual_ln, cublas_gemm_ex, launch_bias_relu, cublas_gemm_ex)"),
        OpLaunches(op="residual_add", kernels=2 if llama else 1,
                   source="op_binding/residual_add.py::forward: no biases → torch add + vector_add "
                          f"({_PT}::_vector_add); biases → {_PT}::residual_add_bias (launch_bias_residual)"),
    ]
    if tp > 1:
        ops.append(OpLaunches(op="all_reduce", kernels=2,
                              source="ds_attention.py::forward, ds_mlp.py::forward (dist.all_reduce, mp_group)"))
    return tuple(ops)


def layer_launches(engine: str, model_type: str, zero3: bool = False, tp: int = 1) -> int:
    """Kernels one decoder layer launches per decode token on ``engine``; 0 under CUDA graphs (vLLM) or when the
    generation runs elsewhere (remote)."""
    if engine in ("vllm", "remote"):
        return 0
    ops = hybrid_engine_ops(model_type, zero3, tp) if engine == "hybrid-engine" else None
    return sum(o.kernels for o in ops) if ops is not None else EAGER_LAYER_LAUNCHES


def decode_launch_seconds(engine: str, model_type: str, num_layers: int, zero3: bool = False, tp: int = 1) -> float:
    """The launch floor of one decode step: layers × kernels per layer × ``SECONDS_PER_LAUNCH``."""
    return num_layers * layer_launches(engine, model_type, zero3, tp) * SECONDS_PER_LAUNCH


def hybrid_engine_merge_bytes(spec: ModelSpec, e: int, zero3: bool, tp: int = 1) -> int:
    """HBM bytes the hybrid engine's ZeRO-3 weight merges move per decode token, all layers, per GPU (0 without
    ZeRO-3, or for a family the hybrid engine has no container for here).

    Under ZeRO-3 the containers leave the split weights as ZeRO manages them (``split_qkv.py`` /
    ``gated_mlp.py::set_*_params_wo_copy(Z3_enabled=True)``), so ``DeepSpeedSelfAttention.forward`` finds
    ``attn_qkvw`` None and copies q, k and v (OPT: their biases too) into one shared buffer on every forward
    (``ds_attention.py::_merge_qkv``), and Llama's ``DeepSpeedMLP.forward`` copies up and gate into another
    (``ds_mlp.py::_merge_inter_w``) — one forward per decode token. Each copy reads and writes its elements: per
    layer 2·(a + 2·kv)·d·h·e for q, k, v (+ 2·(a + 2·kv)·d·e of OPT biases) and 2·2·f·h·e for up and gate, over
    the inference tensor-parallel partition ``tp``. microsoft/DeepSpeed @38327e0. Llama-2-7B: (100.7 + 180.4) MB
    × 2 × 32 layers = 17.99 GB a token."""
    if not zero3 or spec.model_type not in ("llama", "opt"):
        return 0
    qkv_rows = (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
    per_layer = qkv_rows * spec.hidden_size
    if spec.model_type == "opt":
        per_layer += qkv_rows  # q, k, v biases (qkv_unfused_cublas adds them)
    else:
        per_layer += 2 * spec.intermediate_size * spec.hidden_size  # up and gate
    return 2 * per_layer * e * spec.num_layers // tp
