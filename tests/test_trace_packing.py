"""The tracer packs: a packed micro batch's bytes follow its tokens (memplan/harness/packing.py, steps/packed.py).

Model: memplan/tiny-llama (built from its config, no weights: h 64, 2 layers, 4 heads, 2 KV heads, V 512). Rows
of prompt_len 64 + gen_len 448 = 512 tokens, GRPO (4 completions of one prompt), bf16; ~10 s a trace.

* The varlen attention stand-in computes causal attention within each sequence: on real fp32 tensors the packed
  forward's logits and gradients equal those of each sequence run alone.
* Equal tokens, different splits, trace the same: a packed micro batch of T = 512 tokens as one sequence, two or
  four traces the same phase peaks up to the per-sequence bookkeeping — the [k, s] fp32 tensors the log-probs
  (and values) are scattered back into and the k + 1 ``cu_seqlens``: k · s · 4 B ≤ 8 KiB per such tensor,
  under 1 % of each phase's peak (``SPLIT_TOLERANCE``). An s² attention term would differ by a factor 4 between
  one 512-token sequence and four of 128.
* A padded batch of the same two sequences traces more: 2 rows × 512 tokens through the layers, not 512.
* verl's eager entropy in scoring holds its two [T, V] tensors at once (softmax and ``pd · logits``) beside the
  16-bit logits, which is all the fused log-prob kernel holds: 3 · e · T · V = 3 · 2 · 256 · 512 B = 768 KiB, on
  rows of half the length (``ENTROPY_ROWS``: 32 + 224 tokens, two of 128 packed). What sits beside the three
  [T, V] tensors ([T] rows, [k, s] scatter-backs) halves with them: the traced logits are 0.78 % over
  3 · e · T · V at T = 256 as at T = 512 (64 + 448, two of 256), against the same 1 % bound, and the fused
  kernel's stand-in, a Python loop over the T rows, traces in half the time.
"""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.errors import InputError  # noqa: E402
from memplan.harness.setup import resolve  # noqa: E402
from memplan.report import EstimateRequest  # noqa: E402

BASE = dict(model="memplan/tiny-llama", algo="grpo", gpus="1xH100-80GB", prompt_len=64, gen_len=448, group_size=4)
SPLIT_TOLERANCE = 0.01
"""Share of a phase's traced peak by which equal-token splits may differ (the [k, s] scatter-back tensors)."""
ENTROPY_ROWS = dict(prompt_len=32, gen_len=224)
"""The entropy test's rows: ``BASE``'s halved (256 tokens), the [k, s] and [T] tensors beside the logits with them."""
T, V, E = 256, 512, 2  # the entropy test's packed tokens (128 + 128), tiny-llama's vocabulary, bf16 bytes


@functools.cache
def traced(pack: tuple[int, ...] | None, **fields: object):  # noqa: ANN201
    from memplan.harness.fake import trace_request

    req = EstimateRequest(**{**BASE, **fields})
    return {p.phase: p for p in trace_request(req, pack=pack).phases}


def test_varlen_attention_equals_each_sequence_alone() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from memplan.harness import packing
    from memplan.harness.setup import config_dict

    packing.register()
    raw = config_dict("memplan/tiny-llama")
    cfg = AutoConfig.for_model(raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=packing.VARLEN)
    seq = torch.randint(0, cfg.vocab_size, (2, 40))
    lengths = (25, 40)
    out, _indices, _ids = packing.packed_forward(model, seq, lengths)
    out.logits.sum().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    alone = [model(input_ids=seq[i:i + 1, :n], use_cache=False).logits for i, n in enumerate(lengths)]
    sum(x.sum() for x in alone).backward()
    torch.testing.assert_close(out.logits[0], torch.cat([x[0] for x in alone]).detach(), rtol=1e-5, atol=1e-5)
    for packed_grad, p in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(packed_grad, p.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("split", [(256, 256), (100, 412), (128, 128, 128, 128)])
def test_equal_tokens_trace_the_same(split: tuple[int, ...]) -> None:
    one, other = traced((512,)), traced(split)
    for phase in ("scoring", "actor_update"):
        a, b = one[phase].peak_bytes, other[phase].peak_bytes
        assert abs(a - b) <= SPLIT_TOLERANCE * a, (phase, split, a, b)


def test_padded_batch_traces_more() -> None:
    packed = traced((100, 412))
    padded = traced(None, micro_batch_size=2)  # the same two rows, each 512 tokens long
    for phase in ("scoring", "actor_update"):
        assert padded[phase].peak_bytes > packed[phase].peak_bytes, phase
    # the layers' saved activations follow the tokens: 1,024 padded against 512 packed
    ratio = padded["actor_update"].breakdown.activation / packed["actor_update"].breakdown.activation
    assert 1.8 < ratio < 2.2, ratio


def test_eager_entropy_in_scoring_by_hand() -> None:
    plain = traced((128, 128), logprob_kernel="fused", **ENTROPY_ROWS)["scoring"]
    with_entropy = traced((128, 128), logprob_kernel="fused", entropy="scoring", entropy_kernel="eager",
                          **ENTROPY_ROWS)["scoring"]
    assert with_entropy.peak_bytes > plain.peak_bytes
    # at the peak: the 16-bit logits [T, V], the softmax pd and pd · logits beside them (and [T]-sized rows:
    # the log-probs, the logsumexp, a few KiB)
    by_hand = 3 * E * T * V
    assert abs(with_entropy.breakdown.logits - by_hand) <= 0.01 * by_hand, (with_entropy.breakdown.logits, by_hand)


@pytest.mark.parametrize(("fields", "field"), [
    (dict(algo="sft", packing=True), "packing"),
    (dict(packing=True, attention="eager"), "attention"),
    (dict(packing=True, logprob_kernel="chunked"), "logprob_kernel"),
    (dict(entropy="scoring"), "entropy_kernel"),  # 'compiled', the default, is not traced
    (dict(packing=True, gen_len_mean=449), "gen_len_mean"),
])
def test_refused_combinations_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        resolve(EstimateRequest(**{**BASE, **fields}))
    assert field in str(err.value)


def test_pack_lengths_are_checked() -> None:
    with pytest.raises(InputError, match="pack"):
        resolve(EstimateRequest(**BASE), pack=(64,))  # no answer token: at least prompt_len + 1
    with pytest.raises(InputError, match="at most 4 sequences"):
        resolve(EstimateRequest(**BASE), pack=(128,) * 5)  # one prompt × group 4 = 4 rows


def test_token_cap_fills_with_mean_length_sequences() -> None:
    # cap 1,200 over sequences of 64 + 192 = 256 tokens: ⌊1200 / 256⌋ = 4 of them (1,024 tokens, noted)
    setup = resolve(EstimateRequest(**BASE, packing=True, gen_len_mean=192, max_tokens_per_gpu=1200))
    assert setup.packed_lengths == (256,) * 4 and setup.score_packed_lengths == (256,) * 4
    assert any("under the token cap 1200" in n for n in setup.notes)
    # a cap under the longest sequence (512): that sequence alone
    assert resolve(EstimateRequest(**BASE, packing=True, max_tokens_per_gpu=300)).packed_lengths == (512,)
