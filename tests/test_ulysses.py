"""Ulysses sequence parallelism (verl ``ulysses_sequence_parallel_size``): what is split, what is gathered, the
checks verl makes, worked by hand.

Shapes (config.json, memplan's catalog): Llama-2-7B a = k = 32, d = 128, h = 4096; Llama-3.1-8B a = 32, k = 8,
d = 128; Qwen2.5-0.5B a = 14, k = 2; bf16 (e = 2).
"""

from __future__ import annotations

import pytest

import memplan
from memplan.catalog import get_model
from memplan.errors import InputError
from memplan.estimator.algorithms import _train_setup, forward, model_states
from memplan.estimator.formulas import (
    layer_forward_transient_per_token,
    ulysses_forward_transient_per_token,
    ulysses_saved_bytes_per_token,
)
from memplan.estimator.resolve import resolve
from memplan.estimator.tokens import ulysses_kv_heads
from memplan.report import EstimateRequest


def test_kv_heads_repeated_so_that_sp_divides_them():
    # monkey_patch.py: repeats = max(sp // k, 1) — its comment's examples: k=4, sp=8 → 2; k=8, sp=8 → 1; k=16 → 1
    assert [ulysses_kv_heads(4, 8), ulysses_kv_heads(8, 8), ulysses_kv_heads(16, 8)] == [8, 8, 16]


def test_saved_bytes_per_local_token_by_hand():
    llama3 = get_model("meta-llama/Llama-3.1-8B")
    # sp = 16: K and V repeated from 8 to 16 heads, 2·e·(16 − 8)·d = 4096; the all-to-all'd output o_proj keeps
    # beside flash's own, e·a·d = 8192
    assert ulysses_saved_bytes_per_token(llama3, 2, 16, weights_trainable=True) == 4096 + 8192
    assert ulysses_saved_bytes_per_token(llama3, 2, 8, weights_trainable=True) == 8192  # 8 KV heads: no repeat
    assert ulysses_saved_bytes_per_token(llama3, 2, 8, weights_trainable=False) == 0  # frozen o_proj keeps no input
    assert ulysses_saved_bytes_per_token(llama3, 2, 1, weights_trainable=True) == 0


def test_forward_transient_by_hand():
    llama2 = get_model("meta-llama/Llama-2-7b-hf")
    # e·d·(5a + 2k + 2k') + 2·e·h + 4·h = 2·128·(160 + 64 + 64) + 16,384 + 16,384 = 106,496 B per local token,
    # above the MLP's 3·e·f + 2·e·h + 4·h = 98,816 (the 5a: traced in tests/test_trace_ulysses.py)
    assert ulysses_forward_transient_per_token(llama2, 2, 2) == 106_496
    assert layer_forward_transient_per_token(llama2, 2) == 98_816


BASE = dict(model="meta-llama/Llama-2-7b-hf", algo="grpo", gpus="8xH100-80GB", engine="fsdp", zero_stage=3,
            micro_batch_size=4, score_micro_batch_size=4, rollout_batch_size=2, group_size=8, prompt_len=512,
            gen_len=512, packing=True, attention="flash", logprob_kernel="fused")


def test_each_gpu_holds_its_share_of_the_tokens():
    run = resolve(EstimateRequest(**BASE, sequence_parallel=2))
    actor = run.roles[0]
    st = model_states(actor, run.e, 0)
    layers = forward(run, actor, st, "actor old log-probs", run.score_seqs)[0]
    # 4 seqs × 1024 tokens packed, over 2 GPUs: 2048 local tokens, each at the all-to-all's 106,496 B
    assert [i[2] for i in layers.items if i[1] == "activation"] == [2048 * 106_496]
    one = resolve(EstimateRequest(**BASE))
    setup, setup1 = _train_setup(run, actor, st), _train_setup(one, one.roles[0], st)
    assert (setup.tokens, setup1.tokens) == (2048, 4096)
    # a layer saves e·a·d = 8192 B more per local token (no repeat: 32 KV heads)
    assert setup.per.base - setup1.per.base == 8192


def test_sharding_is_unchanged():
    """verl shards FSDP over every rank (fsdp_workers.py: the FSDP mesh is the world; Ulysses has its own (dp, sp)
    mesh): the resident model states do not depend on sp."""
    one, two = memplan.estimate(**BASE), memplan.estimate(**BASE, sequence_parallel=2)
    assert one.models == two.models


@pytest.mark.parametrize(("extra", "words"), [
    (dict(model="Qwen/Qwen2.5-0.5B", sequence_parallel=4), "attention heads (14)"),  # 14 % 4
    (dict(sequence_parallel=3), "GPUs (8)"),  # the (dp, sp) mesh
    (dict(sequence_parallel=2, tp=2), "tp 1"),
    (dict(sequence_parallel=2, packing=False), "packing"),
])
def test_checks_name_the_field(extra, words):
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**BASE, **extra})
    assert err.value.field == "sequence_parallel" and words in str(err.value)
