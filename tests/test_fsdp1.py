"""FSDP1 (``fsdp_version=1``, verl's ``actor.strategy: fsdp``): its memory terms worked by hand from torch 2.13's
FSDP1 source (``memplan.estimator.fsdp1``), the request field, and the estimator against rank 0 traced under the
fake process group (``memplan.harness.sharded_fsdp1``), as tests/test_sharded.py does for FSDP2.

The model is tests/test_sharded.py's SMALL Llama: h = 512, 3 layers, vocabulary 4096, untied head.

    U (one decoder layer) = q 512² + k 512·256 + v 512·256 + o 512² + gate, up, down 3·512·1408 + 2 norms 2·512
                          = 262 144 + 131 072 + 131 072 + 262 144 + 2 162 688 + 1 024 = 2 950 144
    R (root)              = embeddings 4096·512 + final norm 512 + LM head 4096·512 = 4 194 816
    H (LM head)           = 4096·512 = 2 097 152
    Ψ                     = 3·U + R = 13 045 248

Over N = 7 ranks neither unit splits evenly, so every padding term shows:

    ⌈U/7⌉ = 421 450 (U padded to 7·421 450 = 2 950 150: 6 elements)
    ⌈R/7⌉ = 599 260 (R padded to 4 194 820: 4 elements)
    one rank's flat shards: 3·421 450 + 599 260 = 1 863 610 elements (Ψ/7 = 1 863 606.9)
"""

from __future__ import annotations

import dataclasses

import pytest

from memplan.errors import InputError
from memplan.estimator.fsdp1 import fsdp1_unsharded, padded, shard_elems
from memplan.estimator.parallel import Sharding, Units, trainable_states
from memplan.report import EstimateRequest

U, R, H = 2_950_144, 4_194_816, 2_097_152
PSI = 3 * U + R
UNITS = Units(layer=U, root=R, head=H)
SHARDING = Sharding(engine="fsdp", zero_stage=3, dp=7, tp=1, offload_optimizer=False, offload_params=False,
                    master_weights=True, optimizer="adamw", optimizer_impl="foreach", fsdp_version=1)
UP, RP = 2_950_150, 4_194_820  # padded to 7 ranks (module docstring)


# -------------------------------------------------------------------------------------------- by hand


def test_flat_parameters_pad_to_the_world_size() -> None:
    """``FlatParamHandle`` pads each flat parameter to N·⌈F/N⌉ (``_get_shard``: ``chunk`` then pad the last)."""
    assert (padded(U, 7), padded(R, 7)) == (UP, RP)
    assert (padded(U, 8), padded(R, 8)) == (U, R)  # 2 950 144 = 8·368 768, 4 194 816 = 8·524 352
    assert shard_elems(UNITS, PSI, 7) == 1_863_610
    assert shard_elems(UNITS, PSI, 8) == PSI // 8 == 1_630_656


def test_sharded_states_of_a_trained_model() -> None:
    """fp32 flat shards (the masters), fp32 sharded gradients (``_saved_grad_shard``), Adam m and v, all over
    the padded shard: 4·1 863 610 = 7 454 440 bytes each, 8·1 863 610 = 14 908 880 for the states."""
    st = trainable_states(PSI, 1408 * 512, U, 2, SHARDING, UNITS)
    assert (st.parameter, st.gradient, st.optstate) == (7_454_440, 7_454_440, 14_908_880)
    assert st.step_temp == 7_454_440  # foreach AdamW: one fp32 temporary per state element (_foreach_sqrt)


def test_unsharded_terms_full_shard() -> None:
    """FULL_SHARD, bf16 compute (e = 2), fp32 reduce (r = 4), N = 7, by hand:

    inside a layer of a forward: the root (kept all forward) and one layer, 2·(4 194 820 + 2 950 150)
        = 14 289 940 — FSDP1 all-gathers straight into the flat buffer: no second all-gather output (FSDP2);
    a layer's unshard: + its bf16 shard copy being all-gathered 2·421 450 = 842 900 → 15 132 840;
    at the LM head: the root alone, 2·4 194 820 = 8 389 640 (the last layer resharded after its forward);
    backward through a layer: root, that layer and the prefetched one (BACKWARD_PRE), the head's gradient and
        the layer's gradients, 2·(4 194 820 + 2·2 950 150 + 2 097 152 + 2 950 144) = 30 284 832;
    a layer's reduce-scatter: bf16 flat gradient 2·U = 5 900 288, its fp32 cast 4·U = 11 800 576, the padded copy
        4·2 950 150 = 11 800 600, the new shard 4·421 450 = 1 685 800 → 31 187 264, beside the root, the
        prefetched layer and the head's gradient 2·(4 194 820 + 2 950 150 + 2 097 152) = 18 484 244: 49 671 508;
    the root's reduce-scatter: 2·R + 4·R + 4·4 194 820 + 4·599 260 = 44 345 216 (larger than its gradient's
        pieces and concatenation beside its weights, 2·(2·R + 4 194 820) = 25 168 904);
    lazy init: the fp32 full-precision buffer of the root, 4·4 194 820 = 16 779 280."""
    fs = fsdp1_unsharded(UNITS, PSI, 2, SHARDING, trains=True)
    assert (fs.forward, fs.copy_out, fs.lm_head, fs.loss, fs.after_forward) == (
        14_289_940, 15_132_840, 8_389_640, 8_389_640, 0)
    assert (fs.backward, fs.late_backward) == (30_284_832, 30_284_832)
    assert (fs.first_reduce_scatter, fs.last_reduce_scatter) == (49_671_508, 49_671_508)
    assert fs.backward_end == 44_345_216
    assert (fs.lazy_init, fs.persists, fs.version) == (16_779_280, 0, 1)


def test_unsharded_terms_shard_grad_op() -> None:
    """SHARD_GRAD_OP: nothing is freed after a forward; every layer stays unsharded from the model's first forward
    to its own post-backward: 2·3·2 950 150 = 17 700 900 kept while other models compute; every unit at once in a
    forward, 2·(4 194 820 + 3·2 950 150) = 26 090 540; the first reduce-scatter (layer 2's, its weights freed)
    beside every other unit and the head's gradient, 2·(13 045 270 − 2 950 150 + 2 097 152) = 24 384 544, plus the
    layer's gradients as at FULL_SHARD, 31 187 264: 55 571 808."""
    fs = fsdp1_unsharded(UNITS, PSI, 2, dataclasses.replace(SHARDING, zero_stage=2), trains=True)
    assert (fs.persists, fs.after_forward, fs.forward, fs.lm_head) == (17_700_900, 17_700_900, 26_090_540, 26_090_540)
    assert fs.first_reduce_scatter == 55_571_808


def test_unsharded_terms_frozen() -> None:
    """A frozen model (verl's reference, bf16, no mixed-precision shard): the root and one layer in a forward,
    2·(4 194 820 + 2 950 150) = 14 289 940, nothing at backward, no lazy-init buffer (no full-precision copy)."""
    fs = fsdp1_unsharded(UNITS, PSI, 2, SHARDING, trains=False)
    assert (fs.forward, fs.copy_out, fs.backward_end, fs.lazy_init) == (14_289_940, 14_289_940, 0, 0)


# -------------------------------------------------------------------------------------------- the request field


def test_fsdp_version_needs_engine_fsdp() -> None:
    import memplan

    with pytest.raises(InputError) as err:
        memplan.estimate(EstimateRequest(model="memplan/tiny-llama", engine="deepspeed", fsdp_version=1))
    assert err.value.field == "fsdp_version"


def test_default_is_fsdp2() -> None:
    """``fsdp_version`` defaults to 2: a request that leaves it out estimates exactly as before."""
    import memplan

    base = dict(model="meta-llama/Llama-2-7b-hf", algo="grpo", gpus="8xH100-80GB", engine="fsdp", zero_stage=3)
    assert memplan.estimate(EstimateRequest(**base)) == memplan.estimate(EstimateRequest(**base, fsdp_version=2))
    assert memplan.estimate(EstimateRequest(**base)) != memplan.estimate(EstimateRequest(**base, fsdp_version=1))


def test_cli_option() -> None:
    from typer.testing import CliRunner

    from memplan.cli.app import app

    args = ["estimate", "--model", "memplan/tiny-llama", "--gpus", "8xH100-80GB", "--fsdp-version", "1"]
    ok = CliRunner().invoke(app, [*args, "--engine", "fsdp", "--zero-stage", "3"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, [*args, "--engine", "deepspeed"])
    assert bad.exit_code == 2 and "--fsdp-version" in bad.output, bad.output
    bad = CliRunner().invoke(app, ["estimate", "--model", "memplan/tiny-llama", "--engine", "fsdp",
                                   "--fsdp-version", "3"])
    assert bad.exit_code == 2 and "--fsdp-version" in bad.output, bad.output


def test_http_422_names_the_field() -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    body = {"model": "memplan/tiny-llama", "algo": "grpo", "gpus": "8xH100-80GB", "engine": "deepspeed",
            "fsdp_version": 1}
    r = TestClient(create_app()).post("/v1/estimate", json=body)
    assert r.status_code == 422 and "fsdp_version" in r.text, r.text
    ok = TestClient(create_app()).post("/v1/estimate", json={**body, "engine": "fsdp", "zero_stage": 3})
    assert ok.status_code == 200, ok.text


# -------------------------------------------------------------------------------------------- against traces

try:  # the tracer needs torch and transformers (the [measure] extra); the terms above do not
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError:
    HAVE_TRACER = False
else:
    HAVE_TRACER = True

if HAVE_TRACER:
    from test_sharded import ALL, COMPONENTS, MEDIAN_TARGET, SMALL, check

    from memplan.harness.accuracy import compare, summary, table
else:
    ALL, SMALL = False, None
traced = pytest.mark.skipif(not HAVE_TRACER, reason="tracing needs torch and transformers")

CI = [("grpo", 3, 8), ("grpo", 2, 8), ("ppo", 3, 8), ("remax", 2, 8), ("grpo", 3, 7)]
"""GRPO at both stages, PPO's critic (a scalar head), ReMax's reward model, and N = 7 (every unit padded)."""
FULL = [(algo, stage, n) for algo in ("ppo", "grpo", "remax") for stage in (2, 3) for n in (2, 8, 64)]
VARIANTS = {
    "tied": (dict(tie_word_embeddings=True), "grpo", 3, 8, {}),
    "no-checkpointing": ({}, "ppo", 3, 8, dict(gradient_checkpointing=False)),
    "no-checkpointing-z2": ({}, "grpo", 2, 8, dict(gradient_checkpointing=False)),
    "sft-z2": ({}, "sft", 2, 8, {}),
    "dpo-z3": ({}, "dpo", 3, 8, {}),
    # the estimate picks a layer's recomputation, the trace its reduce-scatter: equal totals, the weights'
    # and gradients' share moved to activations (9.5 % of the peak)
    "two-micro-batches": ({}, "ppo", 3, 8, dict(micro_batch_size=2, rollout_batch_size=4)),
    "wide-vocab-z2": (dict(vocab_size=32768), "ppo", 2, 8, {}),
}


def _request(model, algo: str, stage: int, n: int, **knobs: object) -> EstimateRequest:  # noqa: ANN001
    return EstimateRequest(**{"model": model, "algo": algo, "gpus": f"{n}xH100-80GB", "engine": "fsdp",
                              "zero_stage": stage, "fsdp_version": 1, "prompt_len": 64, "gen_len": 64,
                              "gradient_checkpointing": True, **knobs})


_TRACES: dict = {}


def _rows(model, algo: str, stage: int, n: int, **knobs: object) -> list:  # noqa: ANN001
    from memplan.harness.sharded import trace_sharded

    req = _request(model, algo, stage, n, **knobs)
    key = req.model_dump_json()
    if key not in _TRACES:
        _TRACES[key] = trace_sharded(req)
    return compare(f"fsdp1 {algo} z{stage} N={n}", _TRACES[key], components=COMPONENTS)


def _case(algo: str, stage: int, n: int):  # noqa: ANN202
    marks = [] if (algo, stage, n) in CI else [pytest.mark.skipif(not ALL, reason="MEMPLAN_SHARDED_ALL=1")]
    return pytest.param(algo, stage, n, marks=marks, id=f"{algo}-z{stage}-N{n}")


@traced
@pytest.mark.parametrize(("algo", "stage", "n"), [_case(*c) for c in dict.fromkeys(CI + FULL)])
def test_estimate_matches_traced_rank0(algo: str, stage: int, n: int) -> None:
    check(f"FSDP1 {algo} z{stage} N={n}", _rows(SMALL, algo, stage, n))


@traced
@pytest.mark.skipif(not ALL, reason="variants: MEMPLAN_SHARDED_ALL=1")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_match_traced_rank0(variant: str) -> None:
    arch, algo, stage, n, knobs = VARIANTS[variant]
    check(variant, _rows(SMALL.model_copy(update=arch), algo, stage, n, **knobs))


@traced
def test_lazy_init_moment_wide_vocabulary() -> None:
    """vocab 32 768: the root (33.6 M) dwarfs a layer, and FSDP1's lazy init at the first forward — the root's fp32
    full-precision buffer, 4·33 554 944 = 134 219 776 bytes, allocated and freed before any optimizer state —
    sets the rollout's peak (step 1). The estimate nets the optimizer states it counts as resident out of that
    moment (``algorithms._fsdp1_lazy_init``), so only the total is compared there; the other phases as usual."""
    rows = _rows(SMALL.model_copy(update=dict(vocab_size=32768)), "grpo", 3, 8)
    rollout = next(r for r in rows if r.phase == "rollout")
    assert abs(rollout.error) <= 0.01, table(rows)
    check("wide-vocab lazy init", [r for r in rows if r.phase != "rollout"])


@traced
def test_median_error_of_total_peak() -> None:
    rows = [r for c in CI for r in _rows(SMALL, *c)]
    median, _worst = summary(rows)
    assert median <= MEDIAN_TARGET, table(rows)


@traced
def test_trace_notes_and_shards() -> None:
    """The trace says FSDP1; rank 0's fp32 flat shards are the hand-worked padded shards: 4·⌈F/N⌉ per unit, each
    one storage (512-byte blocks), the bf16 reference's 2·⌈F/N⌉ likewise."""
    from memplan.harness.counter import block_bytes
    from memplan.harness.fake import CountingProbe
    from memplan.harness.setup import resolve
    from memplan.harness.sharded import ShardedLiveBytes, build_sharded_models, fake_process_group, layouts
    from memplan.harness.steps.common import track_models
    from torch._subclasses.fake_tensor import FakeTensorMode

    key = _request(SMALL, "grpo", 3, 7).model_dump_json()
    _rows(SMALL, "grpo", 3, 7)
    assert "FSDP1 FULL_SHARD" in _TRACES[key].notes[0]
    req = _request(SMALL, "sft", 3, 7)
    setup = resolve(req)
    with fake_process_group(7) as mesh:
        models = build_sharded_models(setup, layouts(req, setup), mesh, FakeTensorMode())
        counter = ShardedLiveBytes()
        track_models(models, CountingProbe(counter))
        flat = [p for p in models.actor.parameters()]
        assert sorted(p.numel() for p in flat) == [421_450] * 3 + [599_260]
        buffers = sum(block_bytes(b.untyped_storage().nbytes()) for b in models.actor.buffers())
        assert counter.current - buffers == 3 * block_bytes(4 * 421_450) + block_bytes(4 * 599_260)


@traced
@pytest.mark.parametrize(("knobs", "field"), [
    (dict(offload="optimizer"), "offload"),
    (dict(ref_zero_stage=3, offload_ref=True), "offload_ref"),
])
def test_unsupported_combinations_name_the_field(knobs: dict, field: str) -> None:
    from memplan.harness.sharded import trace_sharded

    with pytest.raises(InputError) as err:
        trace_sharded(_request(SMALL, "grpo", 3, 8, **knobs))
    assert err.value.field == field
