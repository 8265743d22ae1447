"""Packed micro batches in the traced step: padding removed, sequences end to end in one ``[1, T]`` row.

How the frameworks feed a packed micro batch, and what the tracer does the same way:

* verl's remove-padding path (``use_remove_padding``; ``workers/actor/dp_actor.py::_forward_micro_batch``,
  ``workers/critic/dp_critic.py``): ``unpad_input`` gathers the k sequences' T real tokens into
  ``input_ids_rmpad`` [1, T] with ``position_ids`` restarting at 0 for every sequence; the model runs with
  ``attention_mask=None`` and flash-attention's varlen kernel finds the sequences from the position ids (verl's
  monkey patch; transformers' ``_prepare_from_posids`` → ``cu_seqlens``); the LM head makes ``logits_rmpad``
  [T, V] — every packed position, prompt tokens included — log-probs (and entropy) are taken over all T rows
  against the ids rolled left by one, then ``pad_input`` scatters them back to [k, s] and the answer is sliced.
  The critic's values and a reward model's scores come back the same way.
* transformers' padding-free batches (``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``, TRL's
  ``padding_free``): the same [1, T] row with restarting position ids and ``cu_seq_lens_q/k``,
  ``max_length_q/k`` passed through the model's kwargs to the attention function. The tracer passes these.

Attention. There is no flash-attention kernel under ``FakeTensorMode`` on a CPU, and SDPA over the [1, T] row
would attend across sequences (and eager attention would hold a T×T score matrix no packed run has). So packed
forwards run ``varlen_attention``, registered with transformers' ``AttentionInterface`` as ``VARLEN``: it takes
the flattened q, k, v as ``_prepare_from_posids`` makes them (``.contiguous().view(T, heads, d)``) and
allocates what flash-attn's ``flash_attn_varlen_func`` allocates (``csrc/flash_attn/flash_api.cpp::
mha_varlen_fwd``: ``out = torch::empty_like(q)`` and ``softmax_lse`` fp32 [heads, T]; autograd saves q, k, v,
out and the log-sum-exp; ``flash_attn_interface.py::_flash_attn_varlen_backward``: dq, dk, dv ``empty_like``
q, k, v): no s² term anywhere. What the CUDA kernel allocates and frees inside its backward (``softmax_d``,
fp32 ``dq_accum``; ``dk_expanded``/``dv_expanded`` under GQA) is kernel scratch, which no trace counts for any
op (``counter.py``), the padded path's CPU flash kernel included. Without ``cu_seq_lens_q`` (generation, an
unpacked forward) the same function is transformers' SDPA. On real tensors (the tests on tiny models) it
also computes the values, causal attention within each sequence; a fake tensor has none, and only the
allocations above are made.

Lengths. ``Setup.packed_lengths`` (training) and ``Setup.score_packed_lengths`` (scoring) are the tokens of
each sequence of one micro batch (prompt + answer), ``PACK`` holds them while a recipe runs; the rollout
rows are [n, prompt_len + gen_len] and sequence i of a micro batch is the first ``lengths[i]`` tokens of its
row (the prompt and the first answer tokens; verl's layout pads the prompt on the left and the answer on
the right, which moves nothing here).
"""

from __future__ import annotations

import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from memplan.harness import ulysses
from memplan.harness.setup import VARLEN


PACK: contextvars.ContextVar[tuple[int, ...] | None] = contextvars.ContextVar("pack", default=None)
"""Sequence lengths of the micro batch being run packed (None: padded rows)."""


def _fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu_seqlens.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one sequence, [l, heads, d] in and out (real tensors only)."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                         scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(0, 1)


class _VarlenAttention(torch.autograd.Function):
    """``flash_attn_varlen_func`` by its allocations: q [T, a, d], k and v [T, kv, d] → out [T, a, d], with the
    fp32 log-sum-exp [a, T] saved beside q, k, v and out; backward: dq, dk, dv like q, k, v."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,  # noqa: ANN001
                scale: float) -> torch.Tensor:
        out = torch.empty_like(q)
        lse = torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device)
        if not _fake(q):  # values on real tensors; backward recomputes them, so the lse stays unwritten
            with torch.no_grad():
                for a, b in _segments(cu_seqlens):
                    out[a:b] = _causal(q[a:b], k[a:b], v[a:b], scale)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):  # noqa: ANN001, ANN205
        q, k, v, _out, _lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        if not _fake(q):
            for a, b in _segments(cu_seqlens):
                with torch.enable_grad():
                    qs, ks, vs = (t[a:b].detach().requires_grad_() for t in (q, k, v))
                    grads = torch.autograd.grad(_causal(qs, ks, vs, ctx.scale), (qs, ks, vs), dout[a:b])
                for full, g in zip((dq, dk, dv), grads):
                    full[a:b] = g
        return dq, dk, dv, None, None


def varlen_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: object) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: q [1, a, T, d], k and v [1, kv, T, d] → ([1, T, a, d], None).

    Packed (``cu_seq_lens_q`` given): transformers' flash path (``integrations/flash_attention.py`` transposes to
    [1, T, heads, d], ``_prepare_from_posids`` makes them contiguous [T, heads, d]) into ``_VarlenAttention``.
    Otherwise transformers' ``sdpa_attention_forward``.
    """
    cu_seqlens = kwargs.pop("cu_seq_lens_q", None)
    if cu_seqlens is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    assert query.shape[0] == 1, "a packed micro batch is one row"
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if (sp := ulysses.degree(module)) > 1:  # this rank's tokens, all-to-all'd around the kernel (harness.ulysses)
        return ulysses.attention(query, key, value, kwargs.get("position_ids"), cu_seqlens, scale, sp,
                                 _VarlenAttention.apply), None
    q, k, v = (t.transpose(1, 2).contiguous().view(-1, t.shape[1], t.shape[3]) for t in (query, key, value))
    out = _VarlenAttention.apply(q, k, v, cu_seqlens, scale)
    return out.unsqueeze(0), None


def register() -> None:
    """Make ``VARLEN`` an ``attn_implementation`` transformers accepts (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)


# ------------------------------------------------------------------------------------------- the packed row


def unpad(seq: torch.Tensor, lengths: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """verl's ``unpad_input`` for rows whose first ``lengths[i]`` tokens are real: the flat ``indices`` [T] of
    those tokens in ``seq`` [k, s], ``ids`` [1, T], ``position_ids`` [1, T] restarting per sequence, and
    ``cu_seqlens`` (int32, k + 1)."""
    k, s = seq.shape
    assert len(lengths) == k, (lengths, seq.shape)
    flat = [i * s + t for i, n in enumerate(lengths) for t in range(n)]
    indices = torch.tensor(flat, dtype=torch.long, device=seq.device)
    ids = seq.reshape(-1).index_select(0, indices).unsqueeze(0)
    position_ids = (indices % s).unsqueeze(0)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=seq.device)
    return indices, ids, position_ids, cu_seqlens


def packed_forward(model: nn.Module, seq: torch.Tensor,
                   lengths: tuple[int, ...]) -> tuple[object, torch.Tensor, torch.Tensor]:
    """``model`` over the packed row of ``seq``'s first ``lengths`` tokens: (its output, the ``indices``, the
    packed ``ids`` [1, T])."""
    indices, ids, position_ids, cu = unpad(seq, lengths)
    longest = max(lengths)
    if (sp := ulysses.degree(model)) > 1:  # Ulysses: this rank's slice of the row (harness.ulysses.slice_row)
        ids, position_ids, cu = ulysses.slice_row(ids, position_ids, cu, sp)
    out = model(input_ids=ids, position_ids=position_ids, use_cache=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                max_length_q=longest, max_length_k=longest)
    return out, indices, ids


def pad_back(values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """verl's ``pad_input``: per-token ``values`` [T] scattered back into zeros of ``shape`` [k, s]."""
    if values.shape[0] != indices.shape[0]:  # Ulysses: this rank's slice, gathered first
        values = ulysses.gather_outputs(values, indices.shape[0])
    full = values.new_zeros(shape[0] * shape[1]).index_put((indices,), values)
    return full.view(shape)


def last_tokens(lengths: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Index of each sequence's last token in the packed row (a reward model's score position)."""
    ends, total = [], 0
    for n in lengths:
        total += n
        ends.append(total - 1)
    return torch.tensor(ends, dtype=torch.long, device=device)
