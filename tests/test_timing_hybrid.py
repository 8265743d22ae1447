"""DeepSpeed-Chat's hybrid engine: its decode launch floor from DeepSpeed's own kernels (memplan/timing/launches.py).

Every count below is read from microsoft/DeepSpeed @38327e0 (file and function beside it) or traced
(gpt-fast's eager layer: launches.EAGER_LAYER_LAUNCHES); the launch latency is the one measured eager figure
memplan already used (gpt-fast blog: 25.5 tokens/s on Llama-2-7B, A100-80GB). A100-80GB: HBM 2,039 GB/s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memplan.report import EstimateRequest
from memplan.timing import launches, step_time
from memplan.timing.hardware import DECODE_HBM_EFFICIENCY, EAGER_DECODE_SECONDS_PER_LAYER

CORPUS = Path(__file__).parent.parent / "benchmarks" / "corpus" / "timing" / "public_runs.jsonl"
RECORDS = {r["id"]: r for r in map(json.loads, CORPUS.read_text(encoding="utf-8").splitlines()) if r}


def _counts(ops) -> dict[str, int]:
    return {o.op: o.kernels for o in ops}


def test_launch_latency_is_the_eager_layer_over_its_kernels():
    # 1 / 25.5 tokens/s / 32 layers = 1.2255 ms per layer, over the 51 kernels the eager gpt-fast layer launches
    assert launches.SECONDS_PER_LAUNCH == pytest.approx(1 / 25.5 / 32 / 51)
    assert launches.SECONDS_PER_LAUNCH == pytest.approx(24.03e-6, rel=1e-3)
    # HF's eager layers keep exactly the measured floor: 32 × 51 × 24.03 µs = 39.2 ms a token
    assert launches.decode_launch_seconds("hf", "llama", 32) == pytest.approx(32 * EAGER_DECODE_SECONDS_PER_LAYER)
    assert launches.decode_launch_seconds("hf", "llama", 32) == pytest.approx(1 / 25.5)


def test_llama_layer_under_the_hybrid_engine_launches_15_kernels():
    ops = launches.hybrid_engine_ops("llama")
    # ds_rms_qkv: launch_rms_norm + cublas_gemm_ex; ds_softmax_context: bias_add_transform_0213, rotary
    # (rotate_half, containers/llama.py), strided gemm, softmax, strided gemm, transform4d_0213; ds_vector_matmul:
    # o_proj; ds_rms_mlp_gemm: rms_norm (with the residual), gemm, gated SiLU, gemm; no biases: torch add +
    # vector_add (residual_add.py::forward)
    assert _counts(ops) == {"qkv_gemm": 2, "softmax_context": 6, "vector_matmul": 1, "mlp_gemm": 4,
                            "residual_add": 2}
    assert launches.layer_launches("hybrid-engine", "llama") == 15
    assert all("pt_binding.cpp" in o.source or ".py" in o.source for o in ops)


def test_opt_layer_under_the_hybrid_engine_launches_14_kernels():
    # qkv_unfused_cublas: fused_ln, gemm, bias_add; no rotary (5); mlp_unfused_cublas: fused_residual_ln, gemm,
    # bias_relu, gemm; biases: one launch_bias_residual
    assert _counts(launches.hybrid_engine_ops("opt")) == {"qkv_gemm": 3, "softmax_context": 5, "vector_matmul": 1,
                                                          "mlp_gemm": 4, "residual_add": 1}
    assert launches.layer_launches("hybrid-engine", "opt") == 14


def test_zero3_merges_the_split_weights_every_forward_and_tp_all_reduces():
    # ZeRO-3: _merge_qkv copies q, k, v (3; OPT also their biases: 6), Llama's _merge_inter_w up and gate (2)
    assert launches.layer_launches("hybrid-engine", "llama", zero3=True) == 15 + 3 + 2
    assert launches.layer_launches("hybrid-engine", "opt", zero3=True) == 14 + 6
    # inference_tp_size > 1: an all-reduce after the attention and after the MLP
    assert launches.layer_launches("hybrid-engine", "llama", tp=2) == 15 + 2


def test_other_engines_and_families():
    assert launches.layer_launches("vllm", "llama") == 0  # CUDA graphs
    assert launches.layer_launches("remote", "llama") == 0  # generation on other GPUs
    assert launches.hybrid_engine_ops("qwen2") is None  # no hybrid container counted: the eager count
    assert launches.layer_launches("hybrid-engine", "qwen2") == launches.EAGER_LAYER_LAUNCHES


def _decodes(record_id: str):
    record = RECORDS[record_id]
    result = step_time(EstimateRequest(**record["request"]), dataset_samples=record["dataset_samples"],
                       epochs=record["epochs"])
    return [i for p in result.phases if p.phase == "rollout" for i in p.items if "decode" in i.what]


def test_remax_decode_pass_by_hand():
    # ReMax README, 4×A100-80GB without offload: actor ZeRO-2, 26 sequences per GPU, prompt 256, answer 256.
    # Per decode step: weights 6,738,415,616 × 2 B = 13.477 GB; KV 26 × (256 + 128) × 524,288 B = 5.234 GB;
    # 18.711 GB / (2,039e9 × 0.71) = 12.925 ms. Launch floor: 32 layers × 15 × 24.03 µs = 11.53 ms: HBM binds.
    # A pass: 256 × 12.925 ms = 3.309 s (it was 256 × 39.2 ms = 10.04 s at HF's eager floor).
    weights, kv = 6_738_415_616 * 2, 26 * 384 * 524_288
    hbm = (weights + kv) / (2039e9 * DECODE_HBM_EFFICIENCY)
    assert hbm == pytest.approx(12.925e-3, rel=1e-3)
    floor = launches.decode_launch_seconds("hybrid-engine", "llama", 32)
    assert floor == pytest.approx(32 * 15 * 24.03e-6, rel=1e-3) and floor < hbm
    decodes = _decodes("remax-readme/remax-4gpu-no-offload")
    assert [i.what.split(":")[0] for i in decodes] == ["sampled", "greedy"]
    for item in decodes:
        assert item.bound == "hbm"
        assert item.seconds == pytest.approx(256 * hbm, rel=1e-6)
        assert item.seconds == pytest.approx(3.309, rel=1e-3)


def test_opt_1_3b_decode_stays_launch_bound():
    # DeepSpeed-Chat Table 1, OPT-1.3B on 8×A100-40GB: 24 layers × 14 kernels × 24.03 µs = 8.07 ms a token, more
    # than its HBM time (2.63 GB of fp16 weights / (1,555e9 × 0.71) = 2.4 ms): 256 tokens = 2.067 s, the same on
    # the A100-80GB, so memplan still cannot show the measured 80GB/40GB speed-up (1.31×).
    for gpu in ("40GB", "80GB"):
        (item,) = _decodes(f"dschat-readme/opt-1.3b-8xA100-{gpu}")
        assert item.bound == "launch"
        assert item.seconds == pytest.approx(256 * 24 * 14 * launches.SECONDS_PER_LAUNCH)
        assert item.seconds == pytest.approx(2.067, rel=1e-3)
