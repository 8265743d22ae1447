"""``logprob_kernel``: log-probs and cross-entropy by ``log_softmax`` of fp32-cast logits, or by a fused kernel.

Expected bytes worked by hand from the kernels' allocations (``memplan.estimator.formulas``): the log-softmax
path holds bf16 logits, their fp32 copy and the fp32 log-softmax when scoring, (2 + 4 + 4)·V per position,
and 3 · 4V in training; a fused cross-entropy (flash-attn's, as verl calls it) only the 16-bit logits, whose
gradient it writes in place, and 8 bytes of fp32 outputs per position: 2V + 8; OpenRLHF 0.11's path every
position's logits cast to fp32 (2V + 4V at the cast) through the same kernel, whose default backward allocates
an fp32 gradient beside the fp32 logits it saved (8V in training); TRL 1.16's fused LM head
(``trl/kernels/chunked_logprob.py``) no logits at all: one reused 4,096 × 32,768 16-bit tile, the scored
positions' hidden states copied out, and in backward fp32 accumulators of the hidden states' and LM head's
gradients with their 16-bit copies.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
from api.main import create_app
from memplan.cli.app import app
from memplan.errors import InputError

V, H = 152_064, 3_584  # Qwen2.5-7B's vocabulary and hidden size: the log-prob moment is each forward's largest
GRPO = dict(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xA100-80GB", zero_stage=3, micro_batch_size=2,
            score_micro_batch_size=8, prompt_len=256, gen_len=256)


def _logits(report, phase: str) -> list[int]:
    items = next(p for p in report.phases if p.phase == phase).items
    return [li.bytes for li in items if li.category == "logits"]


@pytest.mark.parametrize("kernel, scoring, training", [
    ("log-softmax", 8 * 256 * V * 10, 2 * 256 * V * 12),
    ("fused", 8 * 256 * (2 * V + 8), 2 * 256 * (2 * V + 8)),
    # OpenRLHF: all 512 positions' logits; scoring: bf16 + their fp32 copy and the int64 labels; training: the
    # fp32 logits flash-attn's cross-entropy saved and the fp32 gradient it allocates (out of place), 16 B more
    ("fp32-fused", 8 * 512 * (6 * V + 8), 2 * 512 * (8 * V + 16)),
])
def test_logits_of_each_kernel(kernel, scoring, training):
    report = memplan.estimate(**GRPO, logprob_kernel=kernel)
    assert _logits(report, "scoring") == [scoring]  # 8 sequences × 256 answer positions (fp32-fused: 512)
    assert _logits(report, "actor_update") == [training]  # 2 sequences trained at a time


def test_chunked_lm_head_by_hand():
    """Scoring 8 × 256 = 2,048 answer positions: a 2,048 × 32,768 bf16 tile, the backbone's last hidden states
    over all 8 × 512 positions (2H each), their compact copy (2H), int64 labels (8), 7 fp32 statistics, the
    log-sum-exp and the log-probs (36) — no longer the scoring phase's peak, which is the layers' (checked on
    the activity itself). Training 2 × 256 = 512 positions: the tile, the saved copy, labels and log-sum-exp
    (2H + 12), the incoming gradient and its masked select (8), the hidden states' gradient in fp32 and bf16
    (6H), and the LM head's, trained, in fp32 and bf16 (6·V·H)."""
    from memplan.estimator.algorithms import forward, model_states
    from memplan.estimator.resolve import resolve
    from memplan.report import EstimateRequest

    report = memplan.estimate(**GRPO, logprob_kernel="chunked")
    assert _logits(report, "actor_update") == [512 * 32768 * 2 + 512 * (2 * H + 12 + 8 + 6 * H) + 6 * V * H]
    run = resolve(EstimateRequest(**GRPO, logprob_kernel="chunked"))
    actor = run.roles[0]
    moments = forward(run, actor, model_states(actor, run.e, run.lora_rank), "actor old log-probs", 8)
    assert moments[-1].name == "actor old log-probs: chunked LM head"
    assert [i[2] for i in moments[-1].items if i[1] == "logits"] == [
        2048 * 32768 * 2 + 4096 * 2 * H + 2048 * (2 * H + 8 + 36)]


def test_sft_and_dpo_losses_too():
    sft = memplan.estimate(model="Qwen/Qwen2.5-7B", algo="sft", gpus="8xA100-80GB", zero_stage=3,
                           micro_batch_size=4, seq_len=1024, logprob_kernel="fused")
    assert _logits(sft, "actor_update") == [4 * 1024 * (2 * V + 8)]  # every position through the LM head
    dpo = memplan.estimate(model="Qwen/Qwen2.5-7B", algo="dpo", gpus="8xA100-80GB", zero_stage=3,
                           micro_batch_size=2, seq_len=512, logprob_kernel="fused")
    assert _logits(dpo, "scoring") == [4 * 512 * (2 * V + 8)]  # 2 pairs: chosen + rejected


def test_chunked_lm_head_under_lora_trains_no_head():
    """With LoRA the LM head is frozen: no fp32 accumulator of its gradient (6·V·H of the full run's)."""
    full = _logits(memplan.estimate(**GRPO, logprob_kernel="chunked"), "actor_update")
    lora = _logits(memplan.estimate(**GRPO, logprob_kernel="chunked", lora_rank=16), "actor_update")
    assert full[0] - lora[0] == 6 * V * H


@pytest.mark.parametrize("kernel", ["fused", "fp32-fused", "chunked"])
def test_deepspeed_chat_keeps_its_own_path(kernel):
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**GRPO, "score_micro_batch_size": None}, rollout_engine="hybrid-engine",
                         logprob_kernel=kernel)
    assert err.value.field == "logprob_kernel"


def test_cli_and_api():
    args = ["estimate", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus", "8xA100-80GB",
            "--zero-stage", "3", "--micro-batch-size", "2", "--score-micro-batch-size", "8"]
    ok = CliRunner().invoke(app, [*args, "--logprob-kernel", "fused", "--json"])
    assert ok.exit_code == 0, ok.output
    assert memplan.Report.model_validate_json(ok.stdout) == memplan.estimate(**GRPO, logprob_kernel="fused")
    bad = CliRunner().invoke(app, [*args, "--logprob-kernel", "liger"])
    assert bad.exit_code == 2 and "--logprob-kernel" in bad.output
    client = TestClient(create_app())
    r = client.post("/v1/estimate", json={**GRPO, "logprob_kernel": "liger"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "logprob_kernel"]


@pytest.mark.parametrize("algo", ["grpo", "dpo", "sft"])
def test_estimate_matches_the_traced_kernels(algo):
    """The tracer's stand-ins (``memplan.harness.steps.common``) for flash-attn's cross-entropy (``_FusedLogprob``:
    its allocations, fp32 outputs per row, the gradient written into the logits, or into a new tensor under
    OpenRLHF's fp32 logits of every position) and TRL's fused LM head
    (``_ChunkedLogprob`` on the backbone's hidden states: its tile, statistics and fp32 accumulators) against the
    estimate, phase by phase within the accuracy tolerances; and the knob reaches the trace: the scoring (SFT:
    training) peak of either is below log-softmax's."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.harness import trace
    from memplan.harness.accuracy import compare, table
    from memplan.report import EstimateRequest

    peaks = {}
    for kernel in ("fused", "fp32-fused", "chunked", "log-softmax"):
        request = EstimateRequest(model="memplan/tiny-llama", algo=algo, gpus="1xH100-80GB", prompt_len=64,
                                  gen_len=64, micro_batch_size=2, logprob_kernel=kernel)
        rows = compare(f"{algo} tiny-llama {kernel}", trace(request))
        bad = [(r.phase, name) for r in rows for name in r.over_tolerance()]
        assert not bad, table(rows)
        peaks[kernel] = {r.phase: r.traced_bytes for r in rows}
    first = "actor_update" if algo == "sft" else "scoring"
    assert peaks["fused"][first] < peaks["log-softmax"][first]
    assert peaks["chunked"][first] < peaks["log-softmax"][first]


def test_plan_offers_a_fused_kernel_first_when_logits_overflow():
    """GRPO on Qwen2.5-7B scoring 32 answers of 4,096 tokens at a time overflows in scoring; a fused kernel
    (verl's default, Liger's) costs no throughput and ranks before smaller batches or TP."""
    from memplan.planner import plan
    from memplan.report import EstimateRequest

    request = EstimateRequest(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", engine="fsdp", zero_stage=3,
                              gradient_checkpointing=True, rollout_engine="vllm", micro_batch_size=4,
                              rollout_batch_size=16, group_size=8, prompt_len=1024, gen_len=4096,
                              score_micro_batch_size=32)
    assert not memplan.estimate(request).fits
    result = plan(request, allow={"logprob_kernel", "score_micro_batch_size", "tp"}, allow_tight=True)
    assert result.candidates[0].changes == {"logprob_kernel": ("log-softmax", "fused")}
    assert memplan.estimate(request.model_copy(update={"logprob_kernel": "fused"})).fits
    dschat = plan(EstimateRequest(**{**GRPO, "score_micro_batch_size": None, "rollout_engine": "hybrid-engine"}),
                  allow={"logprob_kernel", "zero_stage"})
    assert "logprob_kernel" not in dschat.knobs
