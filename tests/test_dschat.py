"""DeepSpeed-Chat and ReMax on DeepSpeed's hybrid engine (``rollout_engine='hybrid-engine'``): each term
worked by hand from its source (deepspeed 0.10.3, transformers 4.31, the trainers; ../notes/research_dschat.md),
then the make-experience and log-prob moments re-run on a tiny Llama on the CPU with memplan's live-storage
counter (the trainers' own lines, transformers installed here with 4.31's fp32 logit upcast applied by hand).
"""

from __future__ import annotations

import pytest

import memplan
from memplan.catalog import get_model
from memplan.estimator.formulas import (
    dschat_gather_log_probs_bytes,
    dschat_logprob_backward_bytes,
    eager_attention_forward_bytes,
    hf_logits_element_bytes,
    hybrid_engine_cache_bytes,
    hybrid_engine_workspace_bytes,
    lm_head_logits_bytes,
    past_key_values_bytes,
    remax_experience_temporaries_bytes,
)
from memplan.estimator.algorithms import phases, role_states
from memplan.estimator.dschat import dschat_experience
from memplan.estimator.resolve import resolve
from memplan.report import ArchConfig, EstimateRequest
from memplan.specs import spec_from_arch
from memplan.units import GiB, MiB

LLAMA2_7B = get_model("meta-llama/Llama-2-7b-hf")  # h 4096, a 32, d 128, L 32, V 32000
S = 512  # ReMax / DeepSpeed-Chat: 256 prompt + 256 answer = max_out_tokens
REMAX = dict(model="meta-llama/Llama-2-7b-hf", gpus="8xA100-40GB", zero_stage=2, ref_zero_stage=3,
             reward_zero_stage=3, offload_ref=True, offload_reward=True, gradient_checkpointing=True,
             rollout_engine="hybrid-engine", micro_batch_size=1, prompt_len=256, gen_len=256, dtype="bf16")


# --- 1. Each term by hand (Llama-2-7B, one 512-token sequence, bf16) ---------------------------------------

def test_hybrid_engine_workspace_by_hand():
    # inference_context.h:98-182, head 128 (no padding), mp 1, T = 512, elem 2:
    #   activation 10·32·128 = 40,960; temp 32·512 = 16,384; cache 32·32·128·2 = 262,144 (per token, per seq)
    #   (40,960 + 16,384 + 262,144) · 512 · 2 = 319,488 · 1,024 = 327,155,712 B = 312 MiB
    assert hybrid_engine_workspace_bytes(LLAMA2_7B, 1, S, 2) == 327_155_712 == 312 * MiB
    assert hybrid_engine_cache_bytes(LLAMA2_7B, 1, S, 2) == 262_144 * 1_024 == 256 * MiB
    assert hybrid_engine_workspace_bytes(LLAMA2_7B, 8, S, 2) == 8 * 327_155_712  # linear in the batch
    # inference tensor parallelism splits temp and cache, not the activations: (40,960 + 8,192 + 131,072)·1,024
    assert hybrid_engine_workspace_bytes(LLAMA2_7B, 1, S, 2, tp=2) == 180_224 * 1_024
    # head dim 80 is padded to 128 (flash attention's padded heads): h 2560, a 32, L 32, T 512
    odd = spec_from_arch(ArchConfig(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
                                    intermediate_size=6912, vocab_size=32000))
    assert hybrid_engine_workspace_bytes(odd, 1, S, 2) == (10 * 4096 + 32 * 512 + 2 * 32 * 4096) * 512 * 2


def test_per_sequence_terms_by_hand():
    # past_key_values: 2 (K, V) · 32 layers · 32 heads · 128 · 512 tokens · 2 B = 268,435,456 B = 256 MiB
    assert past_key_values_bytes(LLAMA2_7B, S, 1, 2) == 268_435_456 == 256 * MiB
    # transformers 4.31: Llama upcasts its logits (modeling_llama.py:825), OPT does not (modeling_opt.py:956)
    assert hf_logits_element_bytes(LLAMA2_7B, 2) == 4
    assert hf_logits_element_bytes(get_model("facebook/opt-6.7b"), 2) == 2
    # fp32 [512, 32000] logits: 512 · 32,000 · 4 = 65,536,000 B = 62.5 MiB
    assert lm_head_logits_bytes(1, S, 32000, 4) == 65_536_000
    # eager attention, one layer: 32 heads · 512² · (2 + 4 + 2) = 67,108,864 B = 64 MiB
    assert eager_attention_forward_bytes(1, 32, S, 2) == 67_108_864 == 64 * MiB
    # gather_log_probs over 511 positions: 511 · 32,000 · 4 = 65,408,000; two sequences add a contiguous copy
    assert dschat_gather_log_probs_bytes(1, S, 32000, 4) == 65_408_000
    assert dschat_gather_log_probs_bytes(2, S, 32000, 4) == 2 * 2 * 65_408_000
    # ReMax: five fp32 [512, 32000] tensors: 5 · 65,536,000 = 327,680,000 B = 312.5 MiB
    assert remax_experience_temporaries_bytes(1, S, 32000, 4) == 327_680_000
    # training: 3 · 65,408,000 = 196,224,000 (ReMax); + 65,536,000 kept logits = 261,760,000 (DeepSpeed-Chat)
    assert dschat_logprob_backward_bytes(1, S, 32000, 4, logits_kept=False) == 196_224_000
    assert dschat_logprob_backward_bytes(1, S, 32000, 4, logits_kept=True) == 261_760_000


def test_breakdown_shows_each_term():
    # the ReMax headline run (batch 1), as the report lists it
    remax = memplan.estimate(algo="remax", offload="optimizer", **REMAX)
    for p in remax.phases:  # the workspace stays in every phase (release_inference_cache defaults to False)
        notes = {item.note for item in p.items}
        assert any("hybrid-engine workspace: KV cache" in n for n in notes), p.phase
        kv = sum(i.bytes for i in p.items if "hybrid-engine workspace" in i.note)
        assert kv == 327_155_712
    scoring = next(p for p in remax.phases if p.phase == "scoring")
    assert scoring.activity.startswith("make-experience")
    by_note = {i.note: i.bytes for i in scoring.items}
    assert sum(b for n, b in by_note.items() if "past_key_values" in n) == 2 * 268_435_456
    assert sum(b for n, b in by_note.items() if "logits over all 512 positions" in n) == 2 * 65_536_000
    run = resolve(EstimateRequest(algo="remax", offload="optimizer", **REMAX))  # the post-processing moment
    states = {r.role: role_states(r, run) for r in run.roles}
    moments = dschat_experience(run, {r.role: r for r in run.roles}, states)
    assert moments[-1].name == "make-experience: log-probs"
    # 2 · 256 MiB KV + 2 · 62.5 MiB logits + 312.5 MiB temporaries = 949.5 MiB per sequence
    assert moments[-1].total == 2 * 268_435_456 + 2 * 65_536_000 + 327_680_000


def test_hf_engine_unchanged_by_these_terms():
    # the same run with HF generate keeps no workspace and no DeepSpeed-Chat make-experience moments
    hf = memplan.estimate(algo="remax", offload="optimizer", **dict(REMAX, rollout_engine="hf"))
    for p in hf.phases:
        assert not any("hybrid-engine" in i.note or "make-experience" in i.note for i in p.items), p.phase


def test_actor_logits_held_through_every_later_moment_of_the_update():
    # train_rlhf keeps actor_prob from the loss to the end of the critic's update. With a tied LM head (OPT) the
    # actor's update has a "backward's end" moment before its optimizer step: both hold the logits, and the loss
    # moment counts them once. OPT-1.3B, V 50272, fp16 logits (OPT does not upcast), 1 × 512 positions, by hand:
    held = 1 * 512 * 50272 * 2
    for gc in (False, True):
        run = resolve(EstimateRequest(model="facebook/opt-1.3b", algo="ppo", gpus="1xA100-80GB", dtype="fp16",
                                      rollout_engine="hybrid-engine", prompt_len=256, gen_len=256,
                                      gradient_checkpointing=gc))
        recipe = phases(run, {r.role: role_states(r, run) for r in run.roles})
        for phase in ("actor_update", "critic_update"):
            for act in recipe[phase]:
                logits = [n for role, category, n, note in act.items if role == "actor" and category == "logits"]
                loss = any("log-softmax over all positions" in note for *_, note in act.items)
                assert (len(logits), sum(logits) if not loss else held) == (1, held), (gc, act.name)
        names = [act.name for act in recipe["actor_update"]]
        assert "actor backward's end" in names and "actor optimizer step" in names


def test_per_sequence_cost_of_the_headline_runs():
    # one more sequence per GPU costs, by hand (MiB): ReMax make-experience 312 workspace + 949.5 (above)
    # + experience buffer; PPO make-experience 312 + 2·256 + 2·62.5 + 2·62.4 (log-softmax and its contiguous
    # copy, b > 1) = 1073.8 + buffer. The binding phase is make-experience for both (research note §"Per
    # 512-token sequence"). From 40 to 41 sequences: below ~27 the offloaded reward model's layer gather
    # (345 MiB, fixed) makes its forward the larger moment of PPO's make-experience.
    def cost(algo: str) -> float:
        one = memplan.estimate(algo=algo, offload="optimizer", **dict(REMAX, gpus="1xA100-80GB", micro_batch_size=40))
        two = memplan.estimate(algo=algo, offload="optimizer", **dict(REMAX, gpus="1xA100-80GB", micro_batch_size=41))
        assert one.peak_phase == two.peak_phase == "scoring"
        return (two.peak_bytes_per_gpu - one.peak_bytes_per_gpu) / MiB
    experience = 512 * 24 / MiB  # EXPERIENCE_BYTES_PER_TOKEN over 512 tokens (ReMax: ×2, greedy pass)
    assert cost("remax") == pytest.approx(312 + 949.5 + 2 * experience, abs=0.01)
    assert cost("ppo") == pytest.approx(312 + 512 + 125 + 2 * 65_408_000 / MiB + experience, abs=0.01)


# --- 2. Re-run on the CPU: the trainers' lines on a tiny Llama, counted by memplan's live-storage counter ---

TINY = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=512, vocab_size=1024)


def _tiny_run(algo: str, seq_len: int):
    run = resolve(EstimateRequest(model=ArchConfig(**TINY), algo=algo, gpus="1xA100-80GB", dtype="bf16",
                                  rollout_engine="hybrid-engine", prompt_len=seq_len // 2, gen_len=seq_len // 2))
    states = {r.role: role_states(r, run) for r in run.roles}
    return dschat_experience(run, {r.role: r for r in run.roles}, states)


@pytest.mark.parametrize("algo", ["ppo", "remax"])
def test_make_experience_on_cpu_matches(algo):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch.nn.functional as F

    from memplan.harness.counter import LiveBytes

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**TINY, max_position_embeddings=512, attn_implementation="eager")
    actor = transformers.LlamaForCausalLM(config).to(torch.bfloat16).train()  # train mode, no checkpointing
    ref = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    b, s = 1, 128
    seq = torch.randint(0, TINY["vocab_size"], (b, s))
    mask = torch.ones(b, s, dtype=torch.long)

    def forward(model):  # transformers 4.31's LlamaForCausalLM.forward ends with logits.float() (line 825)
        out = model(seq, attention_mask=mask)
        out.logits = out.logits.float()
        return out

    def gather_log_probs(logits, labels):  # dschat/rlhf/ppo_trainer.py, ReMax remax_trainer.py
        log_probs = F.log_softmax(logits, dim=-1)
        return log_probs.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)

    with LiveBytes() as counter, torch.no_grad():
        for model in (actor, ref):
            for t in [*model.parameters(), *model.buffers()]:
                counter.track(t, "model", "parameter")
        for t in (seq, mask):
            counter.track(t, "input", "other")
        base = counter.current
        with counter.in_phase("make-experience", 0):
            output = forward(actor)  # generate_experience: both outputs kept until it returns
            output_ref = forward(ref)
            kv = sum(t.nbytes for layer in output.past_key_values.layers for t in (layer.keys, layer.values))
            logits, logits_ref = output.logits, output_ref.logits
            if algo == "ppo":
                _ = (gather_log_probs(logits[:, :-1, :], seq[:, 1:]),
                     gather_log_probs(logits_ref[:, :-1, :], seq[:, 1:]))
            else:  # remax_trainer.py @2cdfe70, generate_experience
                log_softmax_values = F.log_softmax(logits, dim=-1)
                softmax_probs = torch.exp(log_softmax_values)
                _entropy = -torch.sum(softmax_probs * log_softmax_values, dim=-1)
                log_softmax_values_ref = F.log_softmax(logits_ref, dim=-1)
                _full_kl = torch.sum(softmax_probs * (log_softmax_values - log_softmax_values_ref), dim=-1)
    measured = counter.peaks["make-experience"].peak_bytes - base
    moments = _tiny_run(algo, s)
    assert kv == 2 * 4 * 256 * 128 * 2  # past_key_values in train mode: 2·L·h·s·2 = 524,288 B
    # memplan's post-processing moment: 2 KV + 2 fp32 logits + the temporaries (the reward and critic forwards,
    # not re-run here, are separate moments); the counter also sees the [b, s] log-probs or entropy (≤ 1 KiB)
    post = moments[-1]
    assert post.name == "make-experience: log-probs"
    assert measured == pytest.approx(post.total, abs=2048)


@pytest.mark.parametrize("kept", [True, False], ids=["dschat-keeps-logits", "remax-frees-logits"])
def test_training_logprob_backward_on_cpu_matches(kept):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from memplan.harness.counter import LiveBytes

    b, s, v = 2, 128, 1024
    seq = torch.randint(0, v, (b, s))
    lm_head_out = torch.randn(b, s, v, dtype=torch.bfloat16, requires_grad=True)

    def gather_log_probs(logits, labels):
        log_probs = F.log_softmax(logits, dim=-1)
        return log_probs.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)

    with LiveBytes() as counter:
        for t in (lm_head_out, seq):
            counter.track(t, "input", "other")
        base = counter.current
        with counter.in_phase("train", 0):
            actor_prob = lm_head_out.float()  # 4.31's upcast; train_rlhf keeps it, ReMax's compute_loss returns
            loss = gather_log_probs(actor_prob[:, :-1, :], seq[:, 1:]).sum()
            if not kept:
                del actor_prob
            loss.backward()
    measured = counter.peaks["train"].peak_bytes - base
    # kept: 128·1024·4·2 + 3·127·1024·4·2 = 4,169,728 B; freed: 3,121,152 B (+ the [b, s−1] log-probs)
    assert measured == pytest.approx(dschat_logprob_backward_bytes(b, s, v, 4, logits_kept=kept), abs=2048)


def test_headline_numbers():
    # memplan compare ... --offload optimizer (README headline setup): the hybrid-engine terms, the fused q/k/v and
    # up/gate copies (8.38 GiB) among them, and the A100-40GB's measured CUDA context (501 MiB) — still not enough
    # for PPO to run out of memory on 8×A100-40GB with --offload (2026-12-07)
    ppo = memplan.estimate(algo="ppo", offload="optimizer", **REMAX)
    remax = memplan.estimate(algo="remax", offload="optimizer", **REMAX)
    fused = (3 * 4096**2 + 2 * 4096 * 11008) * 32 * 2
    assert fused == 8_992_587_776
    assert ppo.peak_bytes_per_gpu / GiB == pytest.approx(37.24, abs=0.01) and ppo.fits
    assert remax.peak_bytes_per_gpu / GiB == pytest.approx(24.00, abs=0.01) and remax.fits
    items = [li.bytes for p in ppo.phases for li in p.items if "fused" in li.note and li.role == "actor"]
    assert items and set(items) == {fused}
