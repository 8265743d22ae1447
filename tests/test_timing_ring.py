"""Ring attention's time (issue 18 × issue 17): OpenRLHF's ``--ds.ring_attn_size`` runs ring-flash-attention's
``llama3_flash_attn_varlen_func``, which all-gathers K and V over the ring, ``heads_k_stride`` KV heads at a time,
not Ulysses' all-to-alls. Each term worked by hand from gpu_perf.json's H100-80GB figures (989.4 TFLOPS bf16,
NVLink 450 GB/s) and the stated efficiencies (matmul 0.50, bus 0.75).

Llama-3.1-8B (config.json): 32 layers, 32 heads × 128, 8 KV heads. tests/data/openrlhf_ring.sh: 8×H100, ZeRO-3,
packed, ring of 4, head stride 2 (n = 8 / 2 = 4 chunks per layer), micro batch 4, checkpointed; with a mean answer
of 14,336 tokens every sequence counts 2,048 + 14,336 = 16,384 tokens, 16 sequences per GPU (the ring's 64 over 4):
t = 262,144 local tokens per pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memplan.catalog import get_model
from memplan.estimator.resolve import resolve
from memplan.frameworks import openrlhf
from memplan.report import EstimateRequest
from memplan.timing import StepTime, formulas, phases, step_time
from memplan.timing.hardware import BUS_EFFICIENCY, MATMUL_EFFICIENCY, get_perf
from memplan.timing.workload import Passes

LLAMA = "meta-llama/Llama-3.1-8B"
FLOPS = 989.4e12 * MATMUL_EFFICIENCY  # H100 bf16 dense at 0.50: 494.7 TFLOPS
NVLINK = 450e9 * BUS_EFFICIENCY  # 337.5 GB/s


def _ring_fields() -> dict:
    run = openrlhf.fields(openrlhf.read((Path(__file__).parent / "data" / "openrlhf_ring.sh").read_text()),
                          "H100-80GB")
    return {**run.fields, "gen_len_mean": 14336}


def _item(result: StepTime, phase: str, words: str, role: str = "actor"):
    return next(i for p in result.phases if p.phase == phase for i in p.items if words in i.what and i.role == role)


def test_ring_all_gather_bytes_by_hand():
    spec = get_model(LLAMA)
    # K and V of 8 KV heads × 128 for 1000 local tokens in bf16, from the 3 other GPUs of a ring of 4:
    # 3 · 1000 · 2 · 8 · 128 · 2 = 12,288,000 B per layer (forward; backward gathers and reduce-scatters as much)
    assert formulas.ring_all_gather_bytes(spec, 1000, 4, 8, 2) == 12_288_000
    assert formulas.ring_all_gather_bytes(spec, 1000, 4, 2, 2) == 12_288_000 / 4  # one chunk of stride 2
    assert formulas.ring_all_gather_bytes(spec, 1000, 1, 8, 2) == 0


def test_ring_launch_charges_its_gathers_not_ulysses():
    """Per chunk (2 KV heads): g = 3 · 262,144 · 2 · 2 · 128 · 2 = 805,306,368 B at 337.5 GB/s = 2.386 ms; its
    attention, c = 4 · (32 / 4) · 128 · 16,384 · 262,144 FLOPs at 494.7 TFLOPS = 35.56 ms, hides every gather but
    the first: a forward adds g per layer, 32 · g = 76.4 ms; a backward g + 4 reduce-scatters of g's bytes = 5·g;
    training (forward, recompute, backward) 32 · 7 · g = 0.534 s. Ulysses' all-to-alls, charged before, were
    262,144 · (64 + 16) · 128 · 2 · 3/4 B per layer: 32 · 4.03 GB / 337.5 GB/s = 0.382 s per forward."""
    fields = _ring_fields()
    ring = step_time(**fields)
    flat = step_time(**{**fields, "sequence_parallel": 1, "sequence_parallel_mode": "ulysses", "ring_head_stride": 1})
    g = 3 * 262_144 * 2 * 2 * 128 * 2 / NVLINK
    c = 4 * 8 * 128 * 16_384 * 262_144 / FLOPS
    assert g == pytest.approx(2.3861e-3, rel=1e-4) and c == pytest.approx(35.56e-3, rel=1e-3) and g < c
    for role, words in (("actor", "old log-probs"), ("reference", "reference log-probs")):
        r, o = _item(ring, "scoring", words, role), _item(flat, "scoring", words, role)
        assert r.bound == o.bound == "compute"  # the same FLOPs per GPU; ZeRO-3's gathers hide under them
        assert r.seconds - o.seconds == pytest.approx(32 * g)
    update = _item(ring, "actor_update", "backward").seconds - _item(flat, "actor_update", "backward").seconds
    assert update == pytest.approx(32 * 7 * g)
    ulysses = step_time(**{**fields, "sequence_parallel_mode": "ulysses", "ring_head_stride": 1})
    a2a = 32 * 262_144 * 80 * 128 * 2 * 3 / 4 / NVLINK
    assert a2a == pytest.approx(0.3818, rel=1e-3)
    assert (_item(ulysses, "scoring", "old log-probs").seconds - _item(flat, "scoring", "old log-probs").seconds
            == pytest.approx(a2a))


def test_ring_gathers_show_when_attention_is_short():
    """Short sequences: 8,192 local tokens of 512, stride 1 (n = 8 chunks of 1 KV head, 4 query heads).
    g = 3 · 8,192 · 2 · 1 · 128 · 2 = 12,582,912 B / 337.5 GB/s = 37.28 µs; c = 4 · 4 · 128 · 512 · 8,192 FLOPs /
    494.7 TFLOPS = 17.36 µs. Forward: g + 7 · (g − c) = 176.7 µs; backward: g + 8 reduce-scatters of g + 7 · (g − 2c)
    = 353.4 µs per layer."""
    run = resolve(EstimateRequest(**{**_ring_fields(), "ring_head_stride": 1}))
    role = run.roles[0]
    p = Passes(seqs=16, seq_len=512, tokens=8192, calls=1, basis="")
    forward, backward = phases._ring_layer_seconds(run, get_perf("H100-80GB"), "bf16", role, p)
    g = 3 * 8192 * 2 * 1 * 128 * 2 / NVLINK
    c = 4 * 4 * 128 * 512 * 8192 / FLOPS
    assert g == pytest.approx(37.28e-6, rel=1e-3) and c == pytest.approx(17.36e-6, rel=1e-3)
    assert forward == pytest.approx(g + 7 * (g - c))
    assert forward == pytest.approx(176.7e-6, rel=1e-3)
    assert backward == pytest.approx(9 * g + 7 * (g - 2 * c))
    assert backward == pytest.approx(353.4e-6, rel=1e-3)
    # every KV head in one gather (stride 8, 8·g): nothing to overlap, 8·g forward, 8·g + 8·g backward
    whole = resolve(EstimateRequest(**{**_ring_fields(), "ring_head_stride": 8}))
    assert phases._ring_layer_seconds(whole, get_perf("H100-80GB"), "bf16", whole.roles[0], p) == pytest.approx(
        (8 * g, 16 * g))
