"""What a GPU (and its server) can do per second, and the fractions of it real code reaches.

The peaks come from ``memplan/catalog/gpu_perf.json`` (datasheets, one source per entry); the achievable
fractions below are stated constants, each with the public measurement it comes from. None is fitted to the
runs memplan compares against (``benchmarks/results/timing.md``).

Units: FLOP/s and bytes/s as floats (1 TFLOPS = 1e12, 1 GB/s = 1e9); everything per GPU and per direction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from memplan.errors import InputError

_PERF_FILE = Path(__file__).parent.parent / "catalog" / "gpu_perf.json"

# ------------------------------------------------------------------------------------ achievable fractions

MATMUL_EFFICIENCY = 0.50
"""Fraction of the dense tensor-core peak that training and prefill matmuls reach, counting every FLOP run
(recomputation included: HFU). llm-foundry's A100-80GB bf16 benchmark table (mosaicml/llm-foundry
``scripts/train/benchmarking/README.md``) gives MFU 0.47–0.60 for 7B–30B models with FSDP and flash attention
(HFU 0.60–0.77 with checkpointing); 0.50 is the low end of its MFU, for stacks without those kernels (HF
eager attention, DeepSpeed ZeRO). Transformers' eager attention and small micro-batches can fall below it."""

DECODE_HBM_EFFICIENCY = 0.71
"""Fraction of the HBM bandwidth a decode step reaches when kernel launches are not the bound (CUDA graphs:
vLLM, torch.compile). PyTorch's "Accelerating Generative AI with PyTorch II: GPT, Fast" (pytorch.org blog,
2023-11-30; A100-80GB power-limited to 330 W, batch 1): Llama-2-7B compiled with CUDA graphs and a static KV
cache, 107.0 tokens/s (~4× its eager 25.5), i.e. 107 × 13.48 GB (bf16 weights) = 1.44 TB/s of 2.039 TB/s."""

EAGER_DECODE_SECONDS_PER_LAYER = 1.0 / 25.5 / 32
"""A decode step without CUDA graphs (HF ``generate``, DeepSpeed-Chat's hybrid engine, which runs HF's
generation loop over its fused layers) is bound by launching its kernels from Python: the same blog's starting
point, eager Llama-2-7B (32 layers) on an A100-80GB at batch 1, runs 25.5 tokens/s, "heavily CPU overhead bound":
39.2 ms a token, 1.23 ms per layer, ~4× what reading the weights takes. A floor per layer and token, independent
of batch, for transformers' eager layers; ``launches.py`` divides it by the kernels that layer launches and charges
DeepSpeed's hybrid engine its fused layers' own count (15 per Llama layer, 14 per OPT layer against 51)."""

BUS_EFFICIENCY = 0.75
"""Fraction of the NVLink / network bandwidth a large NCCL collective reaches (bus bandwidth): nccl-tests'
``all_reduce_perf`` reaches about 230 GB/s bus bandwidth on a DGX A100 (NVLink 300 GB/s per direction);
NVIDIA's DGX performance pages give similar fractions on H100. (As commonly reported; not re-read from a stored
source in this change: to verify.)"""

PCIE_EFFICIENCY = 0.80
"""Fraction of the PCIe link a pinned host↔device copy reaches: CUDA's ``bandwidthTest`` shows about 25–26 GB/s
on PCIe Gen4 x16 (32 GB/s) and ~12–13 GB/s on Gen3 (16 GB/s). (As commonly reported: to verify.)"""

HOST_MEMORY_EFFICIENCY = 0.60
"""Fraction of the server's theoretical DRAM bandwidth a streaming kernel reaches (STREAM Triad on 2-socket
EPYC / Xeon servers is typically 55–70 % of the channels' peak): DeepSpeedCPUAdam streams its states once per
step, so the offloaded step is bound by it. (A typical fraction, not a measurement of DeepSpeedCPUAdam: to verify;
ZeRO-Offload, Ren et al. 2021, arXiv 2101.06840, reports CPU-Adam's step times per model size.)"""

GPU_STREAM_EFFICIENCY = 0.80
"""Fraction of HBM bandwidth a fused element-wise kernel (fused AdamW) reaches on large tensors (the
memory-bound roofline of NVIDIA's datasheet bandwidth; STREAM-like CUDA kernels reach ~80–90 %; to verify)."""

ADAM_BYTES_PER_PARAM = 30
"""Bytes one mixed-precision AdamW step moves per parameter: reads the fp32 master, fp32 gradient, m and v
(16), writes master, m and v (12) and the 16-bit copy of the weight (2)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GPUPerf:
    """One GPU's rates, per GPU and per direction (see gpu_perf.json's ``_doc``)."""

    name: str
    bf16_flops: float
    fp16_flops: float
    fp8_flops: float
    """0: no fp8 tensor cores."""
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float
    """0: GPUs of this kind talk over PCIe."""
    pcie_bytes_per_s: float
    internode_bytes_per_s: float
    host_memory_bytes_per_s: float
    source: str

    def matmul_flops(self, dtype: str) -> float:
        """Dense peak for the weights' dtype (fp32 runs at the bf16 rate's TF32 path at best: not modeled)."""
        return self.fp16_flops if dtype == "fp16" else self.bf16_flops

    def bus_bytes_per_s(self, multi_node: bool) -> float:
        """Per-GPU bandwidth of a collective's slowest link: the network across nodes, else NVLink, else PCIe."""
        if multi_node:
            return self.internode_bytes_per_s
        return self.nvlink_bytes_per_s or self.pcie_bytes_per_s


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict]:
    return json.loads(_PERF_FILE.read_text(encoding="utf-8"))["gpus"]


@lru_cache(maxsize=64)
def get_perf(gpu_name: str) -> GPUPerf:
    """The rates of a catalog GPU, by its gpus.json name (``Run.gpu_name``)."""
    entry = _entries().get(gpu_name)
    if entry is None:
        raise InputError("gpus", f"no performance figures for {gpu_name!r} in memplan/catalog/gpu_perf.json "
                         f"(known: {', '.join(sorted(_entries()))})", gpu_name)
    tera, giga = 1e12, 1e9
    return GPUPerf(
        name=gpu_name, bf16_flops=entry["bf16_tflops"] * tera, fp16_flops=entry["fp16_tflops"] * tera,
        fp8_flops=entry["fp8_tflops"] * tera, hbm_bytes_per_s=entry["hbm_gb_s"] * giga,
        nvlink_bytes_per_s=entry["nvlink_gb_s"] * giga, pcie_bytes_per_s=entry["pcie_gb_s"] * giga,
        internode_bytes_per_s=entry["internode_gb_s"] * giga, host_memory_bytes_per_s=entry["host_memory_gb_s"] * giga,
        source=entry["source"],
    )


def known_gpus() -> tuple[str, ...]:
    return tuple(_entries())
