"""DeepSpeed's hybrid engine with inference tensor parallelism (``inference_tp_size``, DeepSpeed-Chat's
``--inference_tp_size``): memory and time, each term worked by hand for OPT-13B at tp 2 (DeepSpeed-Chat's
8×A100-40GB example) from the catalog's config facts.

Sources: deepspeed 0.10.3 ``runtime/hybrid_engine.py::DeepSpeedHybridEngine.generate`` (layer groups of
``tp_gather_partition_size`` gathered, the non-TP parameters gathered around ``_generate``, the input ids
all-gathered over the group, ``release_memory``), the slicing as DeepSpeed 0.9.0 ran it
(``module_inject/containers/base.py::apply_tensor_parallelism``, ``allocat_tensor=True``),
``csrc/transformer/inference/includes/inference_context.h::GenWorkSpace`` (batch and mp_size as
``ds_transformer.py`` passes them), DeepSpeed-Chat step-3 ``main.py`` (the ZeRO-3 assert).

OPT-13B (huggingface.co/facebook/opt-13b config.json): h 5120, L 40, a 40 (d 128), f 20480, V 50272,
2048 learned positions (+ 2 offset rows), tied LM head, biases on every linear, two LayerNorms per layer.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from memplan.catalog import get_model
from memplan.cli.app import app
from memplan.errors import InputError
from memplan.estimator import estimate
from memplan.estimator.formulas import (
    hybrid_engine_non_tp_bytes,
    hybrid_engine_tp_gather_bytes,
    hybrid_engine_tp_layer_bytes,
)
from memplan.estimator.resolve import resolve
from memplan.frameworks import dschat
from memplan.report import EstimateRequest
from memplan.timing import launches, step_time
from memplan.timing.hardware import (
    BUS_EFFICIENCY, DECODE_HBM_EFFICIENCY, GPU_STREAM_EFFICIENCY, MATMUL_EFFICIENCY, get_perf,
)
from memplan.timing.phases import hybrid_tp

OPT13B = get_model("facebook/opt-13b")
h, L, a, f, V = 5120, 40, 40, 20480, 50272
E = 2  # fp16

# one layer: 12·h² weights; biases q, k, v, out (h each), fc1 (f), fc2 (h); two LayerNorms (2·2·h)
LINEAR_WEIGHTS = 12 * h * h  # 314,572,800
BIASES = 4 * h + f + h  # 46,080
NORMS = 4 * h  # 20,480
LAYER = LINEAR_WEIGHTS + BIASES + NORMS  # 314,639,360 parameters
# the slice a container keeps at tp 2: weights / 2, column biases (q, k, v, fc1) / 2, row biases (out, fc2) whole
SLICE_TP2 = E * (LINEAR_WEIGHTS // 2 + (3 * h + f) // 2 + 2 * h)
# outside the linears: token embeddings, 2050 learned positions, final LayerNorm, every layer's two LayerNorms
NON_TP = E * (V * h + 2050 * h + 2 * h + L * NORMS)
# DeepSpeed-Chat's LoRA (rank 128) on every linear: r·(in + out) each
ADAPTERS = 128 * (4 * (h + h) + 2 * (h + f))  # 11,796,480 per layer
FUSE = 2 * E * h * f  # fuse_lora on fc1: the product and its scaled copy

COMMAND = ("deepspeed main.py --actor_model_name_or_path facebook/opt-13b --critic_model_name_or_path "
           "facebook/opt-350m --actor_zero_stage 3 --critic_zero_stage 3 --enable_hybrid_engine "
           "--inference_tp_size 2 --actor_lora_dim 128 --actor_gradient_checkpointing "
           "--per_device_generation_batch_size 16 --per_device_training_batch_size 16")


def _request(**changes) -> EstimateRequest:
    fields = dschat.fields(dschat.read(COMMAND), "8xA100-40GB").fields
    return EstimateRequest(**{**fields, **changes})


# --- 1. Each memory term by hand ------------------------------------------------------------------------------

def test_catalog_layer_is_the_hand_count():
    assert LAYER == 314_639_360 == OPT13B.layer_params
    assert OPT13B.num_params == L * LAYER + V * h + 2050 * h + 2 * h == 12_853_473_280


def test_tp_layer_slice_by_hand():
    # (157,286,400 + 17,920 + 10,240) · 2 = 314,629,120 B: half the 629,278,720 B layer, plus the whole row biases
    assert SLICE_TP2 == 314_629_120
    assert hybrid_engine_tp_layer_bytes(OPT13B, E, 2) == SLICE_TP2
    # tp 8: 12·5120²/8 = 39,321,600 weights; (3·5120 + 20480)/8 = 4,480; row biases 10,240 → 78,672,640 B
    assert hybrid_engine_tp_layer_bytes(OPT13B, E, 8) == E * (39_321_600 + 4_480 + 10_240) == 78_672_640


def test_non_tp_parameters_by_hand():
    # (257,392,640 + 10,496,000 + 10,240 + 819,200) · 2 = 537,436,160 B (0.50 GiB): the tied head is the embedding
    assert NON_TP == 537_436_160
    assert hybrid_engine_non_tp_bytes(OPT13B, E) == NON_TP


def test_gather_peak_by_hand():
    whole = E * LAYER  # 629,278,720 B
    # 5 groups of 8: the last ends with 40 slices and 8 whole layers: 12,585,164,800 + 5,034,229,760
    assert hybrid_engine_tp_gather_bytes(OPT13B, E, 2, 8) == 40 * SLICE_TP2 + 8 * whole == 17_619_394_560
    # groups of 16 (16, 16, 8): after the second, 32 slices + 16 whole layers beat 40 slices + 8 whole layers
    assert hybrid_engine_tp_gather_bytes(OPT13B, E, 2, 16) == 32 * SLICE_TP2 + 16 * whole
    # LoRA: each gathered layer brings its adapters, and fusing fc1 (419,430,400 B) outweighs one slice: the group's
    # last layer is fused before it is sliced
    assert FUSE > SLICE_TP2
    assert (hybrid_engine_tp_gather_bytes(OPT13B, E, 2, 8, ADAPTERS, FUSE)
            == 8 * E * (LAYER + ADAPTERS) + 39 * SLICE_TP2 + FUSE == 17_912_939_520)
    # one group of every layer: the whole actor gathered beside its slices — worse than tp 1's plain gather
    assert hybrid_engine_tp_gather_bytes(OPT13B, E, 2, 40) == 40 * (whole + SLICE_TP2)


def test_opt13b_rollout_by_hand():
    """The 8×A100-40GB example: the rollout's peak moment is the gather + slicing."""
    report = estimate(_request())
    rollout = next(p for p in report.phases if p.phase == "rollout")
    assert rollout.activity == "sampled rollout: gather + TP slicing"
    items = {i.note.removeprefix("sampled rollout: gather + TP slicing: "): i.bytes for i in rollout.items}
    assert items["8 layers gathered at a time (5 groups) beside the 1/2 slices made so far (LoRA fused into each "
                 "weight)"] == 17_912_939_520
    # the workspace for the all-gathered 2 × 16 = 32 sequences at mp 2, T 512 (inference_context.h): per token
    # and sequence, activations 10·40·128 = 51,200, temp (40/2)·512 = 10,240, cache 40·(40·128/2)·2 = 204,800
    kv = 204_800 * 512 * 32 * E
    assert items["hybrid-engine workspace: KV cache, 32 seqs × 512 tokens (cudaMalloc, kept between "
                 "generations)"] == kv == 6_710_886_400  # as large as tp 1's over 16 sequences
    assert items["hybrid-engine workspace: inference activations and attention scratch"] == (
        (51_200 + 10_240) * 512 * 32 * E) == 2_013_265_920
    assert report.fits  # 33.56 GiB of 39.49 (tp 1: 40.42, over)
    tp1 = estimate(_request(inference_tp_size=1, tp_gather_partition_size=8))
    assert not tp1.fits and tp1.peak_bytes_per_gpu - report.peak_bytes_per_gpu > 6 * 2**30


def test_opt13b_generation_moments_by_hand():
    from memplan.estimator.algorithms import phases, role_states
    run = resolve(_request())
    recipe = phases(run, {r.role: role_states(r, run) for r in run.roles})
    prefill = next(act for act in recipe["rollout"] if act.name == "sampled rollout: prefill")
    params = {note: n for role, cat, n, note in prefill.items if cat == "parameter"}
    assert params["every layer's 1/2 slice (inference tensor parallelism)"] == L * SLICE_TP2 == 12_585_164_800
    assert params["embeddings, norms and LM head gathered whole around generate"] == NON_TP
    logits = sum(n for role, cat, n, note in prefill.items if cat == "logits")
    # OPT keeps fp16 logits (modeling_opt.py): 32 all-gathered sequences × 256 prompt positions × V × 2
    assert logits == 32 * 256 * V * E == 823_656_448


# --- 2. Validation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, says", [
    (dict(zero_stage=2, ref_zero_stage=0, reward_zero_stage=0), "only under ZeRO-3"),
    (dict(inference_tp_size=3), "must divide the actor's GPUs (8)"),
    (dict(inference_tp_size=16, gpus="2x8xA100-40GB"), "GPUs per node (8)"),
    (dict(rollout_engine="hf"), "set rollout_engine 'hybrid-engine'"),
])
def test_bad_inference_tp_names_the_field(changes, says):
    with pytest.raises(InputError) as err:
        resolve(_request(**changes))
    assert err.value.field == "inference_tp_size" and says in str(err.value)


def test_heads_must_divide():
    # DeepSeek-R1-Distill-Qwen-7B's 28 query heads do not split over 8 GPUs (the GPUs divide, the heads do not)
    with pytest.raises(InputError, match="attention heads \\(28\\)") as err:
        resolve(_request(inference_tp_size=8, model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", critic_model=None,
                         reward_model=None))
    assert err.value.field == "inference_tp_size"


def test_partition_without_tp_is_noted():
    run = resolve(_request(inference_tp_size=1, tp_gather_partition_size=4))
    assert any(n.startswith("tp_gather_partition_size 4: ignored") for n in run.notes)


def test_out_of_range_is_a_validation_error():
    with pytest.raises(ValueError, match="inference_tp_size"):
        _request(inference_tp_size=0)


def test_cli_refuses_with_exit_2():
    result = CliRunner().invoke(app, ["estimate", "--model", "facebook/opt-13b", "--gpus", "8xA100-40GB",
                                      "--zero-stage", "3", "--rollout-engine", "hybrid-engine", "--engine",
                                      "deepspeed", "--inference-tp-size", "3"])
    assert result.exit_code == 2, result.output
    assert "inference" in result.output


def test_reader_takes_the_flags():
    fields = dschat.fields(dschat.read(COMMAND + " --tp_gather_partition_size 4"), "8xA100-40GB").fields
    assert fields["inference_tp_size"] == 2 and fields["tp_gather_partition_size"] == 4
    plain = dschat.fields(dschat.read(COMMAND.replace("--inference_tp_size 2 ", "")), "8xA100-40GB").fields
    assert "inference_tp_size" not in plain
    # without the hybrid engine DeepSpeed never reads it (HF generate on the ZeRO engine): a note, not the field
    no_he = dschat.fields(dschat.read(COMMAND.replace("--enable_hybrid_engine ", "")), "8xA100-40GB")
    assert "inference_tp_size" not in no_he.fields and no_he.fields["rollout_engine"] == "hf"
    assert any(n.startswith("inference_tp_size 2: ignored") for n in no_he.notes)


# --- 3. The time, by hand (A100-40GB) ------------------------------------------------------------------------------

def test_hybrid_tp_terms_by_hand():
    run = resolve(_request())
    terms = hybrid_tp(run, run.roles[0])
    # decode reads every layer's slice and the whole (tied) LM head: 12,585,164,800 + 514,785,280 B a token
    assert terms.weight_bytes == L * SLICE_TP2 + V * h * E == 13_099_950_080
    # the LM head is not split: 2·V·h FLOPs per token for the other GPU's sequences
    assert terms.head_flops_per_token == 2 * V * h
    assert terms.slice_copy_bytes == 2 * L * SLICE_TP2
    assert hybrid_tp(resolve(_request(inference_tp_size=1)), run.roles[0]) is None


def test_opt13b_rollout_time_by_hand():
    perf = get_perf("A100-40GB")
    report = step_time(_request())
    rollout = next(p for p in report.phases if p.phase == "rollout").items
    blocks = {b.what.split(": ")[1].split()[0]: b for b in rollout if ": " in b.what}
    # gather + slice: the ZeRO-3 all-gather of the whole actor over 8 GPUs (7/8 of its bytes each, NVLink), then
    # every slice read and written once in HBM
    gather = 12_853_473_280 * E * 7 / 8 / (perf.nvlink_bytes_per_s * BUS_EFFICIENCY)
    copy = 2 * L * SLICE_TP2 / (perf.hbm_bytes_per_s * GPU_STREAM_EFFICIENCY)
    assert blocks["gather"].seconds == pytest.approx(gather + copy, rel=1e-9)

    # one decode step of 16 sequences (+16 from the other GPU, half the heads each) at the mean context 256 + 128:
    # reads the slices + LM head, ZeRO-3's q, k, v merges (read + write, with biases, halved) and the KV cache
    merge = 2 * (3 * h * h + 3 * h) * E * L // 2
    kv = 32 * 384 * 2 * L * (a // 2) * 128 * E  # 32 sequences' K and V at half the heads: 16 sequences' worth
    hbm = (L * SLICE_TP2 + V * h * E + merge + kv) / (perf.hbm_bytes_per_s * DECODE_HBM_EFFICIENCY)
    P = L * LINEAR_WEIGHTS + V * h
    flops = 16 * (2 * P + 4 * L * h * 384) + 2 * V * h * 16
    compute = flops / (perf.matmul_flops("fp16") * MATMUL_EFFICIENCY)
    # OPT under ZeRO-3: 14 fused-op kernels + 6 merges + 2 all-reduces per layer
    launch = L * (14 + 6 + 2) * launches.SECONDS_PER_LAUNCH
    assert launches.layer_launches("hybrid-engine", "opt", zero3=True, tp=2) == 22
    # two all-reduces per layer over the pair, each of 32 sequences' token (32·h·2 B): 2 × 1/2 of it sent each
    all_reduce = 2 * L * 2 * (32 * h * E) / 2 / (perf.nvlink_bytes_per_s * BUS_EFFICIENCY)
    step = max(hbm, compute, launch) + all_reduce
    assert blocks["decode"].seconds == pytest.approx(256 * step, rel=1e-9)
    assert blocks["decode"].bound == "hbm"
    # tp halves the layers' reads: the decode is faster than at tp 1
    tp1 = step_time(_request(inference_tp_size=1))
    tp1_decode = next(b for b in next(p for p in tp1.phases if p.phase == "rollout").items if "decode" in b.what)
    assert blocks["decode"].seconds < 0.6 * tp1_decode.seconds


def test_api_refuses_with_422():
    from fastapi.testclient import TestClient

    from api.main import app as api
    body = {"model": "facebook/opt-13b", "gpus": "8xA100-40GB", "zero_stage": 3, "engine": "deepspeed",
            "rollout_engine": "hybrid-engine", "inference_tp_size": 3}
    response = TestClient(api).post("/v1/estimate", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "inference_tp_size"


def test_compare_resets_it_for_an_algorithm_that_does_not_generate():
    from memplan.estimator.consistency import for_algorithm
    assert for_algorithm(_request(), "dpo").inference_tp_size == 1
    assert for_algorithm(_request(), "remax").inference_tp_size == 2


def test_remax_generates_twice_each_with_its_gather():
    # ReMax's greedy pass is a second generate call: a second gather + slicing (hybrid_engine.py generate)
    run = resolve(_request(algo="remax", critic_model=None))
    from memplan.estimator.algorithms import phases, role_states
    names = [act.name for act in phases(run, {r.role: role_states(r, run) for r in run.roles})["rollout"]]
    assert names.count("sampled rollout: gather + TP slicing") == 1
    assert names.count("greedy rollout (ReMax baseline): gather + TP slicing") == 1
