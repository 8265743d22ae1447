"""The time model counts the tokens a run really processes (issue 18 × issue 17): packed sequences at their mean
length, the micro batches a token cap makes, Ulysses' all-to-alls, vLLM's decode at gen_len_mean. Each term is
worked by hand from gpu_perf.json's H100-80GB figures (989.4 TFLOPS bf16, 3,350 GB/s HBM, NVLink 450 GB/s,
network 50 GB/s per GPU) and the stated efficiencies (matmul 0.50, bus 0.75, decode HBM 0.71).

Qwen2.5-7B-Instruct (config.json): h 3584, 28 layers, 28 heads × 128, 4 KV heads, f 18944, V 152064, untied.
P = 28 · (2 · 3584² + 2 · 3584 · 512 + 3 · 3584 · 18944) + 152064 · 3584 = 28 · 233,046,016 + 544,997,376
  = 7,070,285,824 matmul parameters; Ψ = 7,615,616,512 parameters (transformers' num_parameters()).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memplan.catalog import get_model
from memplan.report import EstimateRequest
from memplan.timing import StepTime, formulas, step_time
from memplan.timing.hardware import BUS_EFFICIENCY, DECODE_HBM_EFFICIENCY, MATMUL_EFFICIENCY

ROOT = Path(__file__).resolve().parent.parent
QWEN = "Qwen/Qwen2.5-7B-Instruct"
PSI = 7_615_616_512
FLOPS = 989.4e12 * MATMUL_EFFICIENCY  # H100 bf16 dense at 0.50
NVLINK = 450e9 * BUS_EFFICIENCY  # 337.5 GB/s
NETWORK = 50e9 * BUS_EFFICIENCY  # 37.5 GB/s
# GRPO, verl-like: FSDP (ZeRO-3) over 8 H100s, packed, 4 prompts × 4 answers = 16 sequences per GPU, prompt 512 +
# answers of at most 1024, 300 on average (mean length 812), micro batch 4, checkpointed, vLLM
PACKED = dict(model=QWEN, algo="grpo", gpus="8xH100-80GB", engine="fsdp", zero_stage=3, packing=True,
              attention="flash", rollout_engine="vllm", rollout_batch_size=4, group_size=4, micro_batch_size=4,
              prompt_len=512, gen_len=1024, gen_len_mean=300, gradient_checkpointing=True)


def _item(result: StepTime, phase: str, words: str, role: str = "actor"):
    return next(i for p in result.phases if p.phase == phase for i in p.items if words in i.what and i.role == role)


# ------------------------------------------------------------------------------------------------ formulas


def test_packed_attention_is_per_sequence():
    spec = get_model("tiny-llama")  # P = 124,928 (tests/test_timing.py), 2 layers, 4 heads × 16
    # three sequences of 8 packed in one row of 24: 24 · 2 · P = 5,996,544 linear FLOPs, and attention within each
    # sequence, 3 · 4 · 2 · 64 · 8² = 98,304 — not over the packed row, 4 · 2 · 64 · 24² = 294,912
    assert formulas.token_forward_flops(spec, True, 24, 8) == 5_996_544 + 98_304
    assert formulas.token_forward_flops(spec, True, 24, 8) == formulas.forward_flops(spec, True, 8, 3)


def test_ulysses_all_to_all_bytes_by_hand():
    spec = get_model(QWEN)
    # q and the output (28 heads × 128) and k, v (4 heads × 128) of 1000 tokens in bf16, half of it to the other GPU:
    # 1000 · (56 + 8) · 128 · 2 · 1/2 = 8,192,000 B
    assert formulas.ulysses_all_to_all_bytes(spec, 1000, 2, 4, 2) == 8_192_000
    assert formulas.ulysses_all_to_all_bytes(spec, 1000, 4, 4, 2) == 12_288_000  # 3/4 of it
    # sp 8 > 4 KV heads: verl repeats them to 8 before the all-to-all: 1000 · (56 + 16) · 128 · 2 · 7/8
    assert formulas.ulysses_all_to_all_bytes(spec, 1000, 8, 8, 2) == 16_128_000
    assert formulas.ulysses_all_to_all_bytes(spec, 1000, 1, 4, 2) == 0


# ------------------------------------------------------------------------------------------ training tokens


def test_packed_update_counts_the_mean_length():
    """16 sequences per GPU at the mean 812 tokens = 12,992 tokens; a forward 12,992 · (2P + 4 · 28 · 3584 · 812)
    = 12,992 · 14,466,514,944 = 1.87949e17 FLOPs; checkpointed training 4 forwards' worth at 494.7 TFLOPS:
    1.5197 s. Padded, the same sequences at 1536: 24,576 · 14,757,134,336 · 4 / 494.7e12 = 2.9325 s. FSDP gathers
    (7/8 of 15.23 GB per GPU at 337.5 GB/s: 39.5 ms, × 4 per micro batch × 4 micro batches) stay under it."""
    result = step_time(**PACKED)
    update = _item(result, "actor_update", "backward")
    assert update.bound == "compute"
    assert update.seconds == pytest.approx(4 * 12_992 * 14_466_514_944 / FLOPS)
    assert update.seconds == pytest.approx(1.5197, rel=1e-4)
    assert "16 sequences in 4 micro batch(es)" in update.what  # ceil(16 / 4)
    padded = step_time(**{**PACKED, "packing": False, "gen_len_mean": None})
    assert _item(padded, "actor_update", "backward").seconds == pytest.approx(2.9325, rel=1e-4)
    assert result.tokens_per_step == 8 * 12_992 and padded.tokens_per_step == 8 * 16 * 1536


def test_packing_without_a_mean_costs_what_padding_does():
    # no gen_len_mean: every answer at gen_len, so the packed micro batch has the padded one's tokens
    packed = step_time(**{**PACKED, "gen_len_mean": None})
    padded = step_time(**{**PACKED, "gen_len_mean": None, "packing": False})
    for words in ("backward", "old log-probs"):
        phase = "actor_update" if words == "backward" else "scoring"
        assert _item(packed, phase, words).seconds == _item(padded, phase, words).seconds


@pytest.mark.parametrize(("cap", "sp", "launches"), [
    (None, 1, 4),     # ceil(16 / 4)
    (None, 2, 8),     # the sp group's 32 sequences, 4 per micro batch (ppo_micro_batch_size_per_gpu per group)
    (3000, 1, 5),     # verl rearrange_micro_batches: ceil(16 · 812 / 3000) = ceil(4.33)
    (3000, 2, 5),     # ceil(32 · 812 / (3000 · 2))
    (1000, 1, 13),    # ceil(12,992 / 1000)
    (500, 1, 16),     # min(16 sequences, ceil(25.98)): one sequence per micro batch at most
])
def test_token_cap_makes_its_micro_batches(cap, sp, launches):
    result = step_time(**{**PACKED, "max_tokens_per_gpu": cap, "sequence_parallel": sp})
    assert f"16 sequences in {launches} micro batch(es)" in _item(result, "actor_update", "backward").what
    assert f"16 sequences in {launches} call(s)" in _item(result, "scoring", "old log-probs").what  # same cap


def test_a_small_cap_repeats_the_gathers_across_nodes():
    """16 H100s on 2 nodes: each FSDP all-gather of the bf16 weights sends 15/16 of 15.23 GB at 37.5 GB/s:
    0.38078 s; a micro batch gathers for forward, recompute and backward and reduce-scatters as much: 1.5231 s. At
    cap 1536, ceil(12,992 / 1536) = 9 micro batches: 13.708 s, network-bound (compute 1.52 s); at cap 3072, 5:
    7.616 s. The cap is charged its time."""
    gather = PSI * 2 * 15 / 16 / NETWORK
    assert gather == pytest.approx(0.38078, rel=1e-4)
    for cap, launches in ((1536, 9), (3072, 5)):
        update = _item(step_time(**{**PACKED, "gpus": "16xH100-80GB", "max_tokens_per_gpu": cap}), "actor_update",
                       "backward")
        assert update.bound == "network"
        assert update.seconds == pytest.approx(launches * 4 * gather)


def test_ulysses_all_to_alls_by_hand():
    """sp 2 over NVLink: 12,992 local tokens · 8,192 B (above) per layer, 28 layers, at 337.5 GB/s: 8.83 ms per
    forward; training runs forward, recompute and backward (each all-to-all once more on the gradient): 26.49 ms,
    added to the compute it cannot overlap. Per GPU the FLOPs are sp 1's: the same tokens, half the heads of twice
    the sequences."""
    one = step_time(**PACKED)
    two = step_time(**{**PACKED, "sequence_parallel": 2})
    forward = 28 * 12_992 * 8_192 / NVLINK
    assert forward == pytest.approx(8.8298e-3, rel=1e-4)
    update = _item(two, "actor_update", "backward").seconds - _item(one, "actor_update", "backward").seconds
    assert update == pytest.approx(3 * forward)
    for role, words in (("actor", "old log-probs"), ("reference", "reference log-probs")):
        scored = _item(two, "scoring", words, role).seconds - _item(one, "scoring", words, role).seconds
        assert scored == pytest.approx(forward)
    assert two.seconds_per_step > one.seconds_per_step


# ----------------------------------------------------------------------------------------------- generation


def test_vllm_decodes_the_longest_answer_at_the_mean_length():
    """vLLM: 1024 decode steps (the longest answer), each reading the 15.23 GB of bf16 weights; the KV cache read
    and the FLOPs follow the answers' mean: 16 · 300 · (512 + 150) · 57,344 B (2 · 28 · 4 · 128 · 2 per token)
    = 182.2 GB over the whole decode, against 1024 · 16 · (512 + 512) · 57,344 B = 962.1 GB at gen_len. HBM at
    3,350 GB/s · 0.71: 6.634 s, and 6.962 s when every answer runs to 1024."""
    hbm = 3350e9 * DECODE_HBM_EFFICIENCY
    decode = _item(step_time(**PACKED), "rollout", "decode")
    assert decode.bound == "hbm"
    assert decode.seconds == pytest.approx((1024 * PSI * 2 + 16 * 300 * 662 * 57_344) / hbm)
    assert decode.seconds == pytest.approx(6.634, rel=1e-3)
    full = _item(step_time(**{**PACKED, "gen_len_mean": None}), "rollout", "decode")
    assert full.seconds == pytest.approx(1024 * (PSI * 2 + 16 * 1024 * 57_344) / hbm)
    assert "KV reads and FLOPs at the mean 300" in decode.what


def test_hf_generate_runs_every_answer_to_the_longest():
    # HF generate keeps a finished sequence in the batch (padding it) until the longest stops: gen_len_mean
    # changes nothing in the rollout
    hf = dict(PACKED, rollout_engine="hf")
    with_mean, without = step_time(**hf), step_time(**{**hf, "gen_len_mean": None})
    rollout = {p.phase: p for p in with_mean.phases}["rollout"]
    assert rollout.seconds == {p.phase: p for p in without.phases}["rollout"].seconds
    assert "the batch runs to its longest" in rollout.tokens


def test_each_phase_says_which_length_it_assumed():
    phases = {p.phase: p.tokens for p in step_time(**{**PACKED, "max_tokens_per_gpu": 3000}).phases}
    assert "1024 steps (the longest answer)" in phases["rollout"]
    assert "mean 812 tokens (prompt 512 + gen_len_mean 300)" in phases["scoring"]
    assert phases["actor_update"].startswith("12992 tokens per GPU in 5 micro batch(es)")
    assert "token cap 3000 per GPU" in phases["actor_update"]
    padded = {p.phase: p.tokens for p in step_time(**{**PACKED, "packing": False}).phases}
    assert "1536 tokens each (padded to the longest)" in padded["actor_update"]


# ----------------------------------------------------------------------------------------- the verl example


def test_plan_fastest_ranks_ulysses_by_its_time():
    """tests/data/verl_dynamic_bsz_sp.sh: sp 2 over 8 H100s, cap 24,000 per GPU, 640 sequences per GPU of 1536
    tokens (no gen_len_mean: at gen_len) = 983,040 local tokens. Ulysses costs, per forward, 28 layers · 983,040 ·
    8,192 B at 337.5 GB/s = 0.6681 s: the actor's and the reference's scoring forwards (2) and the actor's forward,
    recompute and backward (3): 3.3405 s a step. Before this change sp 1 and sp 2 tied (207.3 s each) and the
    cost order picked; now sp 1 wins by its time."""
    pytest.importorskip("typer")
    import json

    from typer.testing import CliRunner

    from memplan.cli.app import app

    args = ["plan", "--verl", str(ROOT / "tests" / "data" / "verl_dynamic_bsz_sp.sh"), "--gpus", "H100-80GB",
            "--allow", "sequence_parallel", "--objective", "fastest", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    best = report["candidates"][0]
    assert best["changes"] == {"sequence_parallel": [2, 1]}
    saved = report["as_given"]["seconds_per_step"] - best["seconds_per_step"]
    assert saved == pytest.approx(5 * 28 * 983_040 * 8_192 / NVLINK)
    assert saved == pytest.approx(3.3405, rel=1e-4)


def test_padded_requests_are_unchanged():
    # what tests/test_timing.py pins (ReMax rows, DeepSpeed-Chat, PPO by hand) runs padded: a packed-only field
    # left at its default leaves the old formulas: compute at prompt_len + gen_len over micro_batch_size calls
    remax = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="remax", gpus="4xA100-80GB", micro_batch_size=40,
                            rollout_engine="hybrid-engine", attention="eager", gradient_checkpointing=True,
                            prompt_len=256, gen_len=256)
    result = step_time(remax)
    fwd = formulas.forward_flops(get_model("meta-llama/Llama-2-7b-hf"), True, 512, 40)
    update = _item(result, "actor_update", "backward")
    assert update.seconds == pytest.approx(4 * fwd / (312e12 * MATMUL_EFFICIENCY))  # A100 bf16 at 0.50
    assert "in 1 micro batch(es); 512 tokens each (padded to the longest)" in update.what
    assert result.tokens_per_step == 4 * 40 * 512 and result.prompts_per_step == 160
