"""OpenRLHF's ring attention group (``--ds.ring_attn_size``, ``--ds.ring_attn_head_stride``): what is split, what
is gathered, the checks OpenRLHF and ring-flash-attention make, worked by hand.

Sources: OpenRLHF @3c3be62 ``models/ring_attn_utils.py`` (the packed row padded to a multiple of the ring and
sliced), ``utils/deepspeed/deepspeed.py::setup_ring_attn`` (a (dp, sp, tp) mesh, ``substitute_hf_flash_attn``);
ring-flash-attention @8996282 ``llama3_flash_attn_varlen.py`` (K/V all-gathered ``heads_k_stride`` KV heads at a
time into two double buffers; backward adds their gradient buffer). Shapes (config.json, memplan's catalog):
Llama-3.1-8B a = 32, k = 8, d = 128, h = 4096, f = 14,336; bf16 (e = 2).
"""

from __future__ import annotations

import pytest

import memplan
from memplan.catalog import get_model
from memplan.errors import InputError
from memplan.estimator.algorithms import _train_setup, forward, model_states, train
from memplan.estimator.formulas import (
    backward_transient_per_token,
    layer_forward_transient_per_token,
    ring_backward_transient_per_token,
    ring_forward_transient_per_token,
)
from memplan.estimator.resolve import resolve
from memplan.frameworks import openrlhf
from memplan.report import EstimateRequest

LLAMA3 = "meta-llama/Llama-3.1-8B"


def test_forward_transient_by_hand():
    spec = get_model(LLAMA3)
    # s = 1 < k: e·d·(3a + 3k + 4·sp·s + 4s) + 8a + 2·e·h + 4·h
    #   = 2·128·(96 + 24 + 16 + 4) + 256 + 16,384 + 16,384 = 35,840 + 33,024 = 68,864
    assert ring_forward_transient_per_token(spec, 2, 4, 1) == 68_864
    # s = k = 8: no send chunks (k[:, :8].contiguous() is k itself); 2·128·(96 + 24 + 256) + 33,024 = 129,280
    assert ring_forward_transient_per_token(spec, 2, 8, 8) == 129_280
    # the MLP's: 3·e·f + 2·e·h + 4·h = 86,016 + 32,768 = 118,784 — the ring's buffers outgrow it at sp = 8, s = 8
    assert layer_forward_transient_per_token(spec, 2) == 118_784


def test_backward_transient_by_hand():
    spec = get_model(LLAMA3)
    # s = k: e·d·(2a + 2k + 6·sp·s) + e·h = 256·(64 + 16 + 384) + 8,192 = 126,976
    assert ring_backward_transient_per_token(spec, 2, 8, 8) == 126_976
    # s = 1: kv_contiguous_buffer (2s), k_0, v_0, send_k, send_v (4s) and, k/s = 8 ≥ 3, a new send_k made while the
    # previous one is bound (1s): 256·(64 + 16 + 12 + 7) + 8,192 = 33,536 (the 7s: traced, below)
    assert ring_backward_transient_per_token(spec, 2, 2, 1) == 33_536
    # the MLP's: 2·e·f + e·h = 57,344 + 8,192 = 65,536
    assert backward_transient_per_token(spec, 2) == 65_536


BASE = dict(model=LLAMA3, algo="grpo", gpus="8xH100-80GB", engine="deepspeed", zero_stage=3, micro_batch_size=4,
            score_micro_batch_size=4, rollout_batch_size=2, group_size=8, prompt_len=1024, gen_len=1024,
            packing=True, attention="flash", logprob_kernel="fp32-fused", gradient_checkpointing=True)
RING = dict(sequence_parallel=8, sequence_parallel_mode="ring", ring_head_stride=8)


def test_each_gpu_holds_its_share_and_the_gathered_kv():
    run = resolve(EstimateRequest(**BASE, **RING))
    actor = run.roles[0]
    st = model_states(actor, run.e, 0)
    layers = forward(run, actor, st, "actor old log-probs", run.score_seqs)[0]
    # 4 seqs × 2048 tokens packed, sliced over 8 GPUs (ring_attn_utils.py::get_tensor_in_current_ring_attn_rank):
    # 1024 local tokens, each at the ring's 129,280 B (above the MLP's 118,784)
    assert [i[2] for i in layers.items if i[1] == "activation"] == [1024 * 129_280]


def test_saved_tensors_follow_the_local_tokens_only():
    """``Llama3FlashAttnVarlenFunc.forward`` saves q, k, v, out, lse as flash attention does: a layer saves per
    local token what it saves unsplit (Ulysses' extra output copy and repeated K/V do not occur)."""
    ring, one = resolve(EstimateRequest(**BASE, **RING)), resolve(EstimateRequest(**BASE))
    st = model_states(ring.roles[0], ring.e, 0)
    setup, setup1 = _train_setup(ring, ring.roles[0], st), _train_setup(one, one.roles[0], st)
    assert (setup.tokens, setup1.tokens) == (1024, 8192)
    assert setup.per == setup1.per


def test_checkpointed_backward_holds_the_gathered_kv_and_its_gradient():
    run = resolve(EstimateRequest(**BASE, **RING))
    actor = run.roles[0]
    fb = train(run, actor, model_states(actor, run.e, 0))[0]
    # gradient checkpointing: one layer recomputed, its backward at 126,976 B per local token (above the MLP's)
    assert [i[2] for i in fb.items if i[3] == "that layer's gradients"] == [1024 * 126_976]


def test_sharding_is_unchanged():
    """DeepSpeed shards ZeRO over every rank of the (dp, sp, tp) mesh's world: the resident model states do not
    depend on the ring."""
    assert memplan.estimate(**BASE).models == memplan.estimate(**BASE, **RING).models


@pytest.mark.parametrize(("extra", "field", "words"), [
    (dict(engine="fsdp"), "sequence_parallel_mode", "deepspeed"),  # OpenRLHF trains with DeepSpeed
    (dict(packing=False), "sequence_parallel", "packing"),  # ring_attn_utils.py slices the packed row
    (dict(sequence_parallel=3, ring_head_stride=1), "sequence_parallel", "GPUs (8)"),  # the (dp, sp, tp) mesh
    (dict(ring_head_stride=3), "ring_head_stride", "heads per GPU (8)"),  # assert nheads_k % heads_k_stride == 0
    (dict(sequence_parallel=1, ring_head_stride=2), "ring_head_stride", "ring"),
])
def test_checks_name_the_field(extra, field, words):
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**BASE, **RING, **extra})
    assert err.value.field == field and words in str(err.value)


def test_openrlhf_reader_sets_the_ring():
    """cli/train_ppo_ray.py: --ds.ring_attn_size, --ds.ring_attn_head_stride (legacy: --ring_attn_size,
    --ring_head_stride); ring attention turns packing_samples on."""
    base = ("python3 -m openrlhf.cli.train_ppo_ray --actor.model_name_or_path meta-llama/Llama-3.1-8B "
            "--actor.num_gpus_per_node 8 --rollout.batch_size 64 --data.max_len 4096 --rollout.max_new_tokens 2048 ")
    run = openrlhf.fields(openrlhf.read(base + "--ds.ring_attn_size 4 --ds.ring_attn_head_stride 2"), "H100-80GB")
    f = run.fields
    assert (f["sequence_parallel"], f["sequence_parallel_mode"], f["ring_head_stride"], f["packing"]) == \
        (4, "ring", 2, True)
    assert not any("ring" in n for n in run.notes)
    legacy = openrlhf.fields(openrlhf.read(base.replace("--actor.model_name_or_path", "--pretrain")
                                           + "--ring_attn_size 2 --ring_head_stride 4"), "H100-80GB").fields
    assert (legacy["sequence_parallel"], legacy["ring_head_stride"]) == (2, 4)
    memplan.estimate(**f)


def test_plan_never_proposes_a_sequence_parallel_size_for_the_ring():
    """The planner's sequence-parallel dimension is verl's Ulysses (engine 'fsdp', ``planner.dimensions._token_dims``); a
    ring run (DeepSpeed) keeps its given size, and a Ulysses size is never proposed to it."""
    from memplan.planner import plan

    big = {**BASE, **RING, "sequence_parallel": 2, "ring_head_stride": 1, "micro_batch_size": 64,
           "score_micro_batch_size": 64, "rollout_batch_size": 16, "gen_len": 3072, "gradient_checkpointing": False}
    assert memplan.estimate(**big).verdict == "does_not_fit"
    found = plan(EstimateRequest(**big), allow={"sequence_parallel", "max_tokens_per_gpu", "gradient_checkpointing"})
    assert found.candidates and all("sequence_parallel" not in c.changes for c in found.candidates)


# --- traced: memplan/harness/ring.py, the library's kernel by its allocations, under FakeTensorMode --------------


def _ring_live(a: int, kv: int, d: int, t: int, sp: int, stride: int, grad: bool) -> tuple[int, int, int]:
    """(forward peak, live after forward, backward peak above what was live before it) of ``ring.attention`` over
    t local tokens, its inputs in transformers' layout: q and k [1, heads, t, d] (the RoPE outputs), v the
    transpose of v_proj's [1, t, kv, d] view."""
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memplan.harness import ring
    from memplan.harness.counter import LiveBytes

    counter = LiveBytes()
    with FakeTensorMode(), counter:
        with counter.in_phase("forward", 1):
            q = torch.empty(1, a, t, d, dtype=torch.bfloat16, requires_grad=grad)
            k = torch.empty(1, kv, t, d, dtype=torch.bfloat16, requires_grad=grad)
            v = torch.empty(1, t, kv, d, dtype=torch.bfloat16).transpose(1, 2).requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                out = ring.attention(q, k, v, sp, stride)
            after = counter.current
        if not grad:
            return counter.peaks["forward"].peak_bytes, after, 0
        dout = torch.empty_like(out)
        before = counter.current
        with counter.in_phase("backward", 1):
            out.backward(dout)
        return counter.peaks["forward"].peak_bytes, after, counter.peaks["backward"].peak_bytes - before


GEOMETRIES = [(4, 2, 2, 1), (4, 2, 2, 2), (32, 8, 4, 1), (32, 8, 8, 8), (14, 2, 4, 1)]
"""(a, kv, sp, s): tiny-llama's heads (4, 2), Llama-3.1-8B's (32, 8), Qwen2.5-0.5B's (14, 2)."""


@pytest.mark.parametrize(("a", "kv", "sp", "stride"), GEOMETRIES)
def test_traced_forward_peak_is_the_estimators_term(a: int, kv: int, sp: int, stride: int) -> None:
    from types import SimpleNamespace

    t, d = 256, 64
    peak, _, _ = _ring_live(a, kv, d, t, sp, stride, grad=False)
    spec = SimpleNamespace(head_dim=d, num_heads=a, num_kv_heads=kv, hidden_size=0, layer_groups=())  # h = 0: attention
    assert peak == t * ring_forward_transient_per_token(spec, 2, sp, stride)


@pytest.mark.parametrize(("a", "kv", "sp", "stride"), GEOMETRIES)
def test_traced_saved_tensors_are_flashs(a: int, kv: int, sp: int, stride: int) -> None:
    """After the forward: the inputs, k's contiguous copy, and flash's out and fp32 lse [a, t] — per local token
    what the unsplit flash path saves (q, k, v copies and out, lse) beside the inputs less v's: nothing more."""
    t, d = 256, 64
    _, after, _ = _ring_live(a, kv, d, t, sp, stride, grad=True)
    inputs, k_copy, out, lse = 2 * d * t * (a + 2 * kv), 2 * d * t * kv, 2 * d * t * a, 4 * a * t
    assert after == inputs + k_copy + out + lse


@pytest.mark.parametrize(("a", "kv", "sp", "stride"), GEOMETRIES)
def test_traced_backward_peak_is_the_estimators_term(a: int, kv: int, sp: int, stride: int) -> None:
    """The backward's own allocations (dq, dk, dv, the K/V buffers and their gradient): the estimator's term less
    the incoming gradients (dout, e·a·d, allocated before; the residual stream's e·h, outside attention)."""
    from types import SimpleNamespace

    t, d = 256, 64
    _, _, grown = _ring_live(a, kv, d, t, sp, stride, grad=True)
    spec = SimpleNamespace(head_dim=d, num_heads=a, num_kv_heads=kv, hidden_size=0, layer_groups=())
    assert grown == t * (ring_backward_transient_per_token(spec, 2, sp, stride) - 2 * a * d)


def test_openrlhf_ring_launch_splits_the_micro_batch():
    """tests/data/openrlhf_ring.sh (docs/packing.md's example): 4 packed sequences of 2048 + 14,336 mean tokens per
    micro batch, sliced over a ring of 4: 4 · 16,384 / 4 = 16,384 tokens per GPU in scoring and the update."""
    from pathlib import Path

    run = openrlhf.fields(openrlhf.read((Path(__file__).parent / "data" / "openrlhf_ring.sh").read_text()),
                          "H100-80GB")
    report = memplan.estimate(**{**run.fields, "gen_len_mean": 14336})
    tokens = {p.phase: p.tokens for p in report.phases}
    assert tokens["scoring"].startswith("16384 tokens per GPU") and tokens["actor_update"].startswith("16384 tokens")
    assert "65536 tokens over 4 sequence-parallel GPUs" in tokens["actor_update"]
