"""Tokens, not sequences (``memplan.estimator.tokens``): packed micro batches, token caps, the readers that set them,
and the planner answering in tokens.

Shapes used below (their config.json, memplan's catalog): Llama-2-7B h = 4096, f = 11008, V = 32000, L = 32; bf16
(e = 2). A Llama layer's no-grad forward holds 3·e·f + 2·e·h + 4·h = 66,048 + 16,384 + 16,384 = 98,816 bytes per
token (``formulas.layer_forward_transient_per_token``); verl's fused cross-entropy e·V + 8 = 64,008 bytes per scored
position (``formulas.fused_logprob_bytes``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import memplan
from memplan.errors import InputError
from memplan.estimator.algorithms import _train_setup, forward, model_states
from memplan.estimator.resolve import resolve
from memplan.estimator.tokens import micro_batch
from memplan.frameworks import openrlhf, trl, verl
from memplan.planner import batch_limit, plan
from memplan.report import EstimateRequest

DATA = Path(__file__).parent / "data"
LAYER = 98_816  # Llama-2-7B, bf16: bytes per token of one layer's no-grad forward (module docstring)
FUSED = 64_008  # Llama-2-7B, bf16: fused cross-entropy bytes per position


def test_micro_batch_tokens_by_hand():
    """seq_len 4096 (prompt 1024 + answer 3072), mean 2024 (answers of 1000 tokens on average)."""
    def mb(**kw):
        return micro_batch(**{"seqs": 4, "seq_len": 4096, "mean_len": 2024, "logit_tokens": 3072, "packed": True,
                              "cap": None, "pool_seqs": 64, **kw})

    padded = mb(packed=False)
    assert (padded.tokens, padded.positions) == (4 * 4096, 4 * 3072)  # padded to the longest; the answers scored
    assert (mb().tokens, mb().positions) == (4 * 2024, 4 * 2024)  # packed: the mean, every position scored
    # whole mean-length sequences, as many as the cap holds: ⌊16384 / 2024⌋ = 8, 16,192 tokens (the pool, 64 ×
    # 2024 = 129,536 tokens, holds more)
    assert (mb(cap=16384).tokens, mb(cap=16384).seqs) == (8 * 2024, 8)
    assert mb(cap=16384, pool_seqs=4).tokens == 4 * 2024  # 8,096 tokens: under the cap, the pool
    over = mb(cap=2048)  # OpenRLHF's first fit: a sequence longer than the cap is a micro batch of its own
    assert (over.tokens, over.seqs) == (4096, 1) and "over the cap" in over.basis
    # Ulysses: verl caps the sp group at cap × sp (dp_actor.py) and slices it: ⌊32768 / 2024⌋ = 16 sequences,
    # 32,384 tokens, 16,192 per GPU
    assert mb(cap=16384, sp=2).tokens == 16 * 2024 // 2
    assert mb(sp=2).tokens == 4 * 2024 // 2  # 4,048


BASE = dict(model="meta-llama/Llama-2-7b-hf", algo="grpo", gpus="1xH100-80GB", engine="torch", micro_batch_size=4,
            rollout_batch_size=2, group_size=8, score_micro_batch_size=4, prompt_len=512, gen_len=512,
            logprob_kernel="fused", attention="flash")


def _scoring(**extra):
    run = resolve(EstimateRequest(**BASE, **extra))
    actor = run.roles[0]
    st = model_states(actor, run.e, 0)
    layers, logprobs = forward(run, actor, st, "actor old log-probs", run.score_seqs)
    return run, [i[2] for i in layers.items if i[1] == "activation"], [i[2] for i in logprobs.items if i[1] == "logits"]


def test_a_packed_forward_follows_its_tokens():
    # padded: 4 × (512 + 512) = 4096 tokens through the layers; the answers' 4 × 512 = 2048 positions scored
    _, act, logits = _scoring()
    assert (act, logits) == ([4096 * LAYER], [2048 * FUSED])  # 404,750,336 and 131,088,384
    # packed, answers of 256 tokens on average: 4 × 768 = 3072 tokens, every packed position through the LM head
    # (verl's logits_rmpad: (total_nnz, vocab))
    _, act, logits = _scoring(packing=True, gen_len_mean=256)
    assert (act, logits) == ([3072 * LAYER], [3072 * FUSED])  # 303,562,752 and 196,632,576
    # a scoring cap of 5000 tokens holds ⌊5000 / 768⌋ = 6 sequences (4,608 tokens) of the pool's 2 × 8 = 16
    run, act, logits = _scoring(packing=True, gen_len_mean=256, max_tokens_per_gpu=4096,
                                score_max_tokens_per_gpu=5000)
    assert (act, logits) == ([4608 * LAYER], [4608 * FUSED])
    actor = run.roles[0]
    assert _train_setup(run, actor, model_states(actor, run.e, 0)).tokens == 5 * 768  # ⌊4096 / 768⌋ = 5
    assert run.accumulates  # 12,288 tokens in the step, 3,840 per micro batch


def test_the_report_says_which_tokens_each_phase_assumed():
    report = memplan.estimate(**BASE, packing=True, gen_len_mean=256, max_tokens_per_gpu=4096)
    tokens = {p.phase: p.tokens for p in report.phases}
    assert "KV cache of 16 seqs × 1024 tokens" in tokens["rollout"]  # HF generate: the longest
    assert tokens["actor_update"] == "3840 tokens per GPU: token cap 4096 per GPU: 5 seqs × 768 mean tokens"
    assert tokens["scoring"] == tokens["actor_update"]  # score_max_tokens_per_gpu defaults to the training cap
    uncapped = memplan.estimate(**BASE, packing=True, gen_len_mean=256)
    assert {p.phase: p.tokens for p in uncapped.phases}["scoring"] == ("3072 tokens per GPU: 4 seqs × 768 mean "
                                                                       "tokens (packed)")
    padded = memplan.estimate(**BASE)
    assert {p.tokens for p in padded.phases if p.phase != "rollout"} == {"4 seqs × 1024 tokens (padded to the longest)"}


@pytest.mark.parametrize(("extra", "field"), [
    (dict(max_tokens_per_gpu=4096), "max_tokens_per_gpu"),  # a cap without packing
    (dict(score_max_tokens_per_gpu=4096), "score_max_tokens_per_gpu"),
    (dict(sequence_parallel=2), "sequence_parallel"),  # Ulysses slices the packed row
    (dict(packing=True, gen_len_mean=513), "gen_len_mean"),  # a mean above the maximum
    (dict(packing=True, attention="eager"), "packing"),  # varlen attention only
])
def test_contradictions_name_the_field(extra, field):
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**BASE, **extra})
    assert err.value.field == field


def test_verl_dynamic_batches_and_ulysses_from_its_example():
    """tests/data/verl_dynamic_bsz_sp.sh: verl's run_qwen2-7b_seq_balance.sh keys (use_remove_padding,
    use_dynamic_bsz, ppo_max_token_len_per_gpu=24000) with ulysses_sequence_parallel_size=2."""
    run = verl.load(DATA / "verl_dynamic_bsz_sp.sh", "H100-80GB")
    f = run.fields
    assert (f["packing"], f["max_tokens_per_gpu"], f["sequence_parallel"]) == (True, 24000, 2)
    # log_prob_max_token_len_per_gpu defaults to ppo_max_token_len_per_gpu (_generated_ppo_trainer.yaml)
    assert f["score_max_tokens_per_gpu"] == 24000
    # what the cap holds at full length over the sp group, 24000 × 2 // (512 + 1024) = 31 (planner, timing)
    assert f["micro_batch_size"] == 31
    assert not any("not modeled" in n or "upper bound" in n for n in run.notes)
    report = memplan.estimate(**f)
    tokens = {p.phase: p.tokens for p in report.phases}
    # a cap of 24000 × 2 over the sp group: ⌊48000 / 1536⌋ = 31 sequences, 47,616 tokens, 23,808 per GPU (the
    # step's 128 prompts × 5 hold far more)
    assert tokens["actor_update"] == ("23808 tokens per GPU: token cap 24000 per GPU: 31 seqs × 1536 mean tokens; "
                                      "47616 tokens over 2 sequence-parallel GPUs")


def test_verl_refuses_a_cap_under_one_sequence():
    # rearrange_micro_batches: assert max_token_len >= max_seq_len (the padded width, 512 + 512 by default)
    text = ("actor_rollout_ref.model.path=Qwen/Qwen2.5-7B actor_rollout_ref.actor.use_dynamic_bsz=True "
            "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=1000 actor_rollout_ref.rollout.name=vllm")
    with pytest.raises(InputError) as err:
        verl.fields(verl.read(text), "H100-80GB")
    assert err.value.field == "verl" and "max_token_len must be greater" in str(err.value)


def test_verl_without_remove_padding_keeps_the_padded_micro_batch():
    text = ("actor_rollout_ref.model.path=Qwen/Qwen2.5-7B actor_rollout_ref.model.use_remove_padding=False "
            "actor_rollout_ref.actor.use_dynamic_bsz=True actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8192 "
            "actor_rollout_ref.rollout.name=vllm")
    f = verl.fields(verl.read(text), "H100-80GB").fields
    # padded micro batches of as many full-length sequences as the cap holds: 8192 ÷ (512 + 512) = 8
    assert (f["packing"], "max_tokens_per_gpu" in f, f["micro_batch_size"]) == (False, False, 8)


def test_openrlhf_packing_and_dynamic_batches():
    """OpenRLHF 0.11 cli/train_ppo_ray.py flags: --ds.packing_samples, --train.dynamic_batch_enable with
    --train.max_tokens_per_gpu and --rollout.max_tokens_per_gpu (seqlen_balancing.py's first fit)."""
    text = (DATA / "openrlhf_ppo.sh").read_text() + (
        " --train.dynamic_batch_enable --train.max_tokens_per_gpu 16384 --rollout.max_tokens_per_gpu 32768"
        " --ds.ring_attn_size 2")
    run = openrlhf.fields(openrlhf.read(text), "H100-80GB")
    f = run.fields
    assert (f["packing"], f["max_tokens_per_gpu"], f["score_max_tokens_per_gpu"]) == (True, 16384, 32768)
    assert (f["sequence_parallel"], f["sequence_parallel_mode"]) == (2, "ring")  # tests/test_ring_attention.py
    memplan.estimate(**f)


def test_trl_padding_free():
    """TRL's SFTConfig padding_free (DataCollatorForLanguageModeling flattens the micro batch)."""
    zero2 = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 2}, "num_processes": 4}
    run = trl.fields({"model_name_or_path": "Qwen/Qwen2.5-1.5B", "padding_free": True,
                      "attn_implementation": "flash_attention_2"}, zero2, "H100-80GB", "sft")
    assert run.fields["packing"] and not any("padding_free" in n for n in run.notes)


TOKENS_RUN = dict(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", engine="fsdp", zero_stage=3,
                  packing=True, attention="flash", prompt_len=1024, gen_len=3072, gen_len_mean=1000,
                  rollout_batch_size=16, rollout_engine="vllm", gradient_checkpointing=True)


def test_max_batch_answers_in_tokens_per_gpu_under_a_token_cap():
    limit = batch_limit(EstimateRequest(**TOKENS_RUN, max_tokens_per_gpu=16384))
    assert limit.search == "max_max_tokens_per_gpu" and limit.max_micro_batch_size is None
    n = limit.max_max_tokens_per_gpu
    assert n is not None and limit.at_limit.request.max_tokens_per_gpu == n and limit.at_limit.fits
    assert limit.past_limit.request.max_tokens_per_gpu == n + 1 and limit.past_limit.verdict != "fits"
    # at most the tokens a GPU trains in a step: 16 prompts × 8 completions × 2024 mean tokens
    assert n <= 16 * 8 * 2024
    # without a cap the answer stays in sequences
    assert batch_limit(EstimateRequest(**TOKENS_RUN)).search == "max_micro_batch_size"


def test_plan_proposes_a_token_cap_or_ulysses_only_where_the_framework_applies_them():
    big = EstimateRequest(**TOKENS_RUN, micro_batch_size=16)  # 16 × 2024 packed tokens: does not fit
    found = plan(big, allow={"sequence_parallel", "max_tokens_per_gpu"}, max_results=5)
    changed = {name for c in found.candidates for name in c.changes}
    assert found.fits_any and changed <= {"sequence_parallel", "max_tokens_per_gpu"} and changed
    # Qwen2.5-7B: 28 heads, 4 KV heads; Ulysses sizes dividing 8 GPUs and 28 heads: 1, 2, 4
    assert {c.changes["sequence_parallel"][1] for c in found.candidates if "sequence_parallel" in c.changes} <= {2, 4}
    padded = EstimateRequest(**{**TOKENS_RUN, "packing": False, "gen_len_mean": None}, micro_batch_size=16)
    found = plan(padded, allow={"sequence_parallel", "max_tokens_per_gpu"}, max_results=5)
    assert not any(c.changes for c in found.candidates)  # IMPOSSIBLE without packing: nothing proposed


def test_cli_renders_the_tokens_and_answers_max_batch_in_tokens():
    from typer.testing import CliRunner

    from memplan.cli.app import app

    flags = ["--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus", "8xH100-80GB", "--engine", "fsdp",
             "--zero-stage", "3", "--packing", "--attention", "flash", "--prompt-len", "1024", "--gen-len", "3072",
             "--gen-len-mean", "1000", "--rollout-batch-size", "16", "--rollout-engine", "vllm",
             "--gradient-checkpointing", "--max-tokens-per-gpu", "16384"]
    runner = CliRunner()
    shown = runner.invoke(app, ["estimate", *flags])
    assert shown.exit_code == 0, shown.output
    # ⌊16384 / 2024⌋ = 8 sequences of 1024 + 1000 tokens
    assert "Tokens assumed" in shown.stdout and "16192 tokens per GPU" in shown.stdout
    limit = runner.invoke(app, ["plan", *flags, "--max-batch"])
    assert limit.exit_code == 0, limit.output
    assert "Largest token cap of a training micro batch per GPU that fits (tokens)" in limit.stdout
    bad = runner.invoke(app, ["estimate", *flags, "--sequence-parallel", "3"])
    assert bad.exit_code == 2 and "sequence" in bad.output
