"""Vocabulary-wide entropy (``formulas.entropy_bytes``) and where the recipes take it, worked by hand.

Sources: verl ``utils/torch_functional.py::entropy_from_logits`` / ``entropy_from_logits_with_chunking``,
``workers/actor/dp_actor.py::_forward_micro_batch`` (``calculate_entropy``; ``inplace_backward = False`` then),
``workers/fsdp_workers.py::compute_log_prob`` (``calculate_entropy = not is_lora``); TRL
``trainer/utils.py::entropy_from_logits`` (128-row chunks); OpenRLHF ``models/utils.py::compute_entropy``; the
backward of each op from torch's ``tools/autograd/derivatives.yaml`` (torch 2.13: ``_softmax`` saves its result,
``logsumexp_backward(grad, self, result)`` = ``grad * (self - result).exp()``, ``mul.Tensor`` one gradient per
factor, ``slice.Tensor`` → ``slice_backward``: a zero-filled gradient of the whole sliced tensor). The traces that
confirm them: benchmarks/results/accuracy.md, "Packed micro batches and the entropy".
Llama-2-7B: V = 32,000; bf16 (e = 2).
"""

from __future__ import annotations

import pytest

import memplan
from memplan.estimator.formulas import entropy_beside_logprobs_bytes, entropy_bytes, fp32_chunked_entropy_backward_bytes
from memplan.frameworks import trl

V = 32_000


@pytest.mark.parametrize(("kernel", "training", "expected"), [
    ("compiled", False, 4096 * 4),  # one fused reduction: the fp32 entropy per position
    ("compiled", True, 4096 * (2 * V + 4)),  # and in backward the logits' gradient, e·V
    ("eager", False, 4096 * 2 * 2 * V),  # softmax beside logsumexp's exp (or the product): 2·e·V
    # the saved softmax; mul's ∂pd and ∂z; logsumexp_backward's z − lse, exp and product: 6·e·V (traced:
    # 7 [T, V] bf16 tensors live at the update's peak on tiny-llama, the logits among them)
    ("eager", True, 4096 * 6 * 2 * V),
    ("chunked", False, 3 * 2 * V * 128 + 4096 * 4),  # one 128-row chunk: log_softmax, exp, product
    ("chunked", True, 4096 * 3 * 2 * V),  # every chunk's logps and exp saved, the logits' gradient
    ("fp32-chunked", False, 12 * V * 2048 + 4096 * 4),  # one 2048-row fp32 chunk: copy, softmax, product
    # two 2048-row chunks; the last one's backward: both chunks' fp32 copy and softmax (8·V·4096) and its five fp32
    # temporaries (20·V·2048) = 73,728·V, above the first chunk's (8·V·2048 + 2·V·4096 + 20·V·2048 = 65,536·V)
    # and its slice_backward's (2·2·V·4096 + 2·V·2048 = 20,480·V); and the fp32 entropy (4 per position)
    ("fp32-chunked", True, 73_728 * V + 4096 * 4),
])
def test_entropy_bytes_by_hand(kernel, training, expected):
    assert entropy_bytes(4096, V, 2, training=training, kernel=kernel) == expected


@pytest.mark.parametrize(("positions", "expected"), [
    # Qwen2.5-0.5B's packed update, 8 × 384 = 3,072 positions: chunks of 2,048 and 1,024, the 1,024 first.
    # Last chunk: 8·3,072 + 20·1,024 = 45,056; first: 8·2,048 + 2·3,072 + 20·2,048 = 63,488; its slice_backward:
    # 0 + 4·3,072 + 2·2,048 = 16,384 (× V). Traced (benchmarks/results/accuracy.md, 'grpo qwen2.5-0.5b packed
    # fp32-chunked entropy'): 7 fp32 [2,048, V] + the slice_backward's bf16 [3,072, V] = 63,488·V beside the logits
    (3072, 63_488 * 151_936),  # 9,646,112,768
    (1000, 28 * 1000 * 151_936),  # one chunk, not sliced (logits[0:T] is the logits): 8·V saved + 20·V
    # 20 chunks (40,960 positions): 8·40,960 + 20·2,048 = 368,640; 8·19·2,048 + 2·40,960 + 20·2,048 = 434,176;
    # the second chunk's slice_backward, two whole-logits gradients: 8·18·2,048 + 4·40,960 + 2·2,048 = 462,848
    (40_960, 462_848 * 151_936),
])
def test_fp32_chunked_backward_moments(positions, expected):
    assert fp32_chunked_entropy_backward_bytes(positions, 151_936, 2) == expected


P = 4096


@pytest.mark.parametrize(("kernel", "logprob_kernel", "training", "logprob_bytes", "expected"), [
    # scoring, log-softmax (e + 8)·V = 10·V: the entropy runs after the fp32 copies are freed, logits 2·V + 4 +
    # 2·2·V = 6·V + 4 < 10·V: nothing more (traced: Qwen2.5-0.5B's scoring peak is the log-softmax's)
    ("eager", "log-softmax", False, P * 10 * V, 0),
    # scoring, fused (2·V + 8: the logits and two fp32 outputs): the softmax and the product on top, 2·e·V
    ("eager", "fused", False, P * (2 * V + 8), P * 4 * V),
    # update, fused: in the entropy's backward the logits and outputs (2·V + 8) and 6·e·V = 12·V; the fused
    # backward after it: logits, the entropy's gradient, its own out of place (6·V + 8). 12·V more
    ("eager", "fused", True, P * (2 * V + 8), P * 12 * V),
    # update, fused, compiled: the entropy's backward 2·V + 8 + 2·V + 4 < the fused backward's 6·V + 8: 4·V more
    ("compiled", "fused", True, P * (2 * V + 8), P * 4 * V),
    # update, log-softmax (12·V): the logits the entropy saved (2·V), the fp32 log-softmax (4·V) and the
    # gathered log-prob (4), 12·V of the entropy's backward = 18·V + 4 (traced, rloo tiny-llama: 18·V);
    # the log-softmax's backward with the entropy's gradient: 14·V. 6·V + 4 more
    ("eager", "log-softmax", True, P * 12 * V, P * (6 * V + 4)),
    # update, log-softmax, TRL's chunks (they save log_softmax's output, not the logits): 4·V + 4 + 6·V < 14·V,
    # the log-softmax's backward beside the entropy's gradient: e·V = 2·V more
    ("chunked", "log-softmax", True, P * 12 * V, P * 2 * V),
    # a chunked LM head has no logits to share: on top
    ("eager", "chunked", True, 123, P * 12 * V),
])
def test_entropy_beside_logprobs_by_hand(kernel, logprob_kernel, training, logprob_bytes, expected):
    assert entropy_beside_logprobs_bytes(P, V, 2, training=training, kernel=kernel, logprob_kernel=logprob_kernel,
                                         logprob_bytes=logprob_bytes) == expected


BASE = dict(model="meta-llama/Llama-2-7b-hf", algo="grpo", gpus="1xH100-80GB", engine="torch", micro_batch_size=4,
            score_micro_batch_size=4, rollout_batch_size=2, group_size=8, prompt_len=512, gen_len=512,
            packing=True, attention="flash", logprob_kernel="fused", ref="separate")


def _items(report, phase, note):
    return [i.bytes for p in report.phases if p.phase == phase for i in p.items if note in i.note]


def test_the_update_holds_the_entropy_and_an_out_of_place_cross_entropy_gradient():
    # 4 packed sequences of 1024 tokens: 4096 positions through the LM head; verl's compiled entropy: its
    # backward's moment (logits, fused outputs, its gradient: 4·V + 12) is below the fused backward's (logits,
    # the entropy's gradient, the fused gradient out of place: 6·V + 8), which adds 2 × e·V to the fused 2·V + 8
    report = memplan.estimate(**BASE, entropy="update")
    assert _items(report, "actor_update", "entropy over the vocabulary") == [P * 2 * 2 * V]  # 524,288,000
    none = memplan.estimate(**BASE)
    assert report.peak_bytes_per_gpu - none.peak_bytes_per_gpu == P * 2 * 2 * V


def test_verl_scoring_entropy_is_the_actors_only():
    report = memplan.estimate(**BASE, entropy="scoring", entropy_kernel="eager", gradient_checkpointing=True)
    scoring = next(p for p in report.phases if p.phase == "scoring")
    # the largest scoring forward is the actor's log-probs with its entropy: 4096 × 2·e·V = 524,288,000
    assert scoring.activity == "actor old log-probs: log-softmax"
    assert _items(report, "scoring", "entropy") == [4096 * 2 * 2 * V]


def test_trl_entropy_settings():
    run = trl.fields({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "entropy_coef": 0.01}, None, "1xH100-80GB", "grpo")
    assert (run.fields["entropy"], run.fields["entropy_kernel"]) == ("update", "chunked")
    run = trl.fields({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "top_entropy_quantile": 0.2}, None, "1xH100-80GB",
                     "grpo")
    assert run.fields["entropy"] == "update-no-grad"  # the mask: under torch.no_grad
    assert run.fields["logprob_kernel"] == "log-softmax"  # the logits the entropy reads (outputs.logits)
    memplan.estimate(**run.fields)
