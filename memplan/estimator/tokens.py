"""Tokens, not sequences: how many tokens one GPU holds in a forward, and which lengths gave them.

A micro batch is a number of tokens. Without packing it is its sequences padded to the longest (memplan: to
prompt_len + gen_len); where the framework packs (verl ``use_remove_padding``, OpenRLHF ``packing_samples``,
TRL ``padding_free``) it is the sum of its sequences' own lengths, fed to the model as one ``[1, total_nnz]`` row
(verl ``dp_actor.py::_forward_micro_batch``: ``unpad_input`` → ``input_ids_rmpad (1, total_nnz)``), and a token
cap bounds it (verl ``use_dynamic_bsz``: ``seqlen_balancing.py::rearrange_micro_batches`` splits a mini-batch
into ceil(total / max_token_len) balanced micro batches; OpenRLHF ``seqlen_balancing.py::
get_minimum_num_micro_batch_size`` fills each micro batch up to ``max_tokens_per_gpu``, a longer sequence alone).

Which length each phase uses, and why:

* **padded** (no packing) — ``seqs × (prompt_len + gen_len)``: a padded batch is as long as its longest
  sequence, and with dozens of samples per batch one of them reaches the limit (verl pads every sequence to
  max_prompt_length + max_response_length).
* **packed, token cap** — as many whole sequences of the mean length as the cap holds, ⌊cap / mean⌋ (at most the
  pool: the sequences one GPU trains or scores in the step), or one longest sequence alone when it is longer
  than the cap: the cap bounds the micro batch whatever the lengths. OpenRLHF's first fit fills each micro batch
  so; verl balances ceil(total / cap) micro batches, whose largest can hold one sequence more (not counted).
* **packed, no cap** — ``seqs × (prompt_len + gen_len_mean)``: the typical micro batch (its worst, every
  sequence at gen_len, is what the padded path counts).
* **the experience buffer** stays padded: verl's ``DataProto`` keeps [b, prompt + response] tensors between
  phases, whatever packing does inside a forward.
* **HF generate's KV cache** follows the longest sequence (the cache of a batch grows until its last sequence
  stops): prompt_len + gen_len, in ``algorithms.generate``. vLLM reserves its fraction of the GPU whatever the
  lengths.
* **Ulysses sequence parallelism** (``sequence_parallel`` = sp): verl multiplies the cap by sp for the
  sequence-parallel group (``dp_actor.py``: ``max_token_len = ppo_max_token_len_per_gpu *
  ulysses_sequence_parallel_size``) and slices the packed row over its sp ranks (``ulysses_pad_and_slice_inputs``):
  each GPU holds ceil(tokens / sp) of them — at most the cap per GPU.
  OpenRLHF's ring attention (``sequence_parallel_mode='ring'``) splits the same way: its cap is per GPU
  (``seqlen_balancing.py::get_minimum_num_micro_batch_size``: ``max_tokens_per_gpu *= ring_attn_size * tp``) and
  ``ring_attn_utils.py::get_tensor_in_current_ring_attn_rank`` pads the row to a multiple of sp and slices it.

Every function is a function of (tokens in the micro batch, sequence lengths) only, so a traced packed micro
batch can be compared with it.
"""

from __future__ import annotations

from typing import NamedTuple


class MicroBatch(NamedTuple):
    """One forward's tokens on one GPU."""

    tokens: int
    """Tokens per GPU through the layers (after the sequence-parallel split)."""
    positions: int
    """Positions per GPU whose vocabulary logits the log-prob path takes."""
    seqs: int
    """Sequences in the micro batch (over its sequence-parallel group)."""
    basis: str
    """How the tokens were counted: padded, packed at the mean length, or capped."""


def micro_batch(*, seqs: int, seq_len: int, mean_len: int, logit_tokens: int, packed: bool, cap: int | None,
                pool_seqs: int | None, sp: int = 1) -> MicroBatch:
    """The tokens of one micro batch per GPU (see the module docstring for which length, and why).

    ``seqs``: sequences per micro batch when there is no cap; ``seq_len`` the longest sequence (prompt_len +
    gen_len), ``mean_len`` the mean one (prompt_len + gen_len_mean); ``logit_tokens`` the positions per sequence
    whose logits a padded batch scores (its answer; every position for OpenRLHF); ``cap`` the token cap per GPU;
    ``pool_seqs`` the sequences the GPU trains or scores in the step (None: unbounded).

    Packed, the LM head runs over every packed position (verl's ``logits_rmpad``: ``(total_nnz, vocab)``).
    """
    if not packed:
        return MicroBatch(seqs * seq_len, seqs * logit_tokens, seqs, f"{seqs} seqs × {seq_len} tokens (padded to the "
                          "longest)")
    if cap is None:
        group = seqs * mean_len
        tokens = -(-group // sp)
        what = f"{seqs} seqs × {mean_len} mean tokens (packed)"
    else:  # whole sequences of the mean length, as many as the cap holds (the tracer packs the same)
        group_cap = cap * sp  # verl: max_token_len × sp over the sequence-parallel group
        if seq_len > group_cap:
            seqs, group = 1, seq_len
            what = f"one sequence of {seq_len} tokens, over the cap {cap}"
        else:
            seqs = group_cap // mean_len
            if pool_seqs is not None and pool_seqs * sp < seqs:
                seqs = pool_seqs * sp
                what = f"the step's {seqs} seqs × {mean_len} mean tokens, under the cap {cap}"
            else:
                what = f"token cap {cap} per GPU: {seqs} seqs × {mean_len} mean tokens"
            group = seqs * mean_len
        tokens = -(-group // sp)
    if sp > 1:
        what += f"; {group} tokens over {sp} sequence-parallel GPUs"
    return MicroBatch(tokens, tokens, seqs, f"{tokens} tokens per GPU: {what}")


def ulysses_kv_heads(num_kv_heads: int, sp: int) -> int:
    """KV heads after verl repeats them for Ulysses: ``repeat_kv(key_states, max(sp // k, 1))``
    (``monkey_patch.py::_ulysses_flash_attention_forward``), so that sp divides them."""
    return num_kv_heads * max(sp // num_kv_heads, 1)


def phase_tokens(run) -> dict[str, str]:  # noqa: ANN001 (a ``resolve.Run``; this module sits below it)
    """Which tokens (and lengths) each phase of ``run`` assumed, one line per phase, for the report."""
    seq = run.train_seq_len

    def padded(seqs: int) -> str:
        return f"{seqs} seqs × {seq} tokens (padded to the longest)"

    out = {}
    if run.rollout_seqs:
        full = run.prompt_len + run.gen_len
        out["rollout"] = {
            "hf": f"KV cache of {run.rollout_seqs} seqs × {full} tokens (the longest: HF generate's cache grows "
                  "until its last sequence stops)",
            "vllm": "vLLM's reservation, whatever the lengths (its KV cache sized for prompt_len + gen_len)",
            "remote": "generated on other GPUs",
        }.get(run.rollout_engine, f"{run.rollout_seqs} seqs × {full} tokens")
    score = run.score_batch.basis if run.score_batch is not None else padded(run.score_seqs)
    train = run.train_batch.basis if run.train_batch is not None else padded(run.train_seqs)
    out["scoring"] = score
    out["actor_update"] = out["critic_update"] = train
    return out
