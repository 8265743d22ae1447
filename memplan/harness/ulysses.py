"""Ulysses sequence parallelism in the traced step (``EstimateRequest.sequence_parallel`` = sp > 1), as verl runs it.

The traced process is rank 0 of a sequence-parallel group of sp GPUs; FSDP (or ZeRO) shards as it would without
Ulysses. What verl does, and what the tracer does the same way (volcengine/verl b178a3cd):

* **The row is sliced** — ``workers/actor/dp_actor.py::_forward_micro_batch`` (and ``dp_critic.py``): the packed
  ``input_ids_rmpad`` [1, T] and its ``position_ids`` go through ``utils/ulysses.py::ulysses_pad_and_slice_inputs``:
  padded to a multiple of sp (``ulysses_pad``: pad tokens with position ids ``arange(pad)``) and each rank keeps
  its ``T_pad / sp`` tokens (``slice_input_tensor``: ``x[:, rank·n:(rank + 1)·n].contiguous()``). Every layer
  outside attention, the LM head and the log-probs run over those local tokens only: logits [T_pad / sp, V].
* **Attention all-to-all** — ``models/transformers/monkey_patch.py::_ulysses_flash_attention_forward``, which
  verl puts in place of transformers' ``_flash_attention_forward``: the local q [1, T/sp, a, d] and k, v
  [1, T/sp, k, d] (transformers' flash path transposes them, views), K and V repeated to k' = k·max(sp // k, 1)
  heads (``repeat_kv``: expand + reshape, a copy when it repeats), then ``gather_seq_scatter_heads`` on each:
  [1, T, heads / sp, d]; the position ids all-gathered (``torch.distributed.all_gather`` into sp ``empty_like``,
  ``torch.concat``); flash attention over all T tokens of a / sp heads (``packing._VarlenAttention``: its output
  and fp32 log-sum-exp, saved with q, k, v); ``gather_heads_scatter_seq`` of the output back to [1, T/sp, a, d].
* **Each all-to-all** is ``ulysses.py::SeqAllToAll`` → ``all_to_all_tensor``: ``input_list = [t.contiguous() for t
  in torch.tensor_split(x, sp, scatter_dim)]`` (copies when the chunks are not contiguous: splitting the heads;
  views when they are: splitting the tokens of a [1, T, ...] tensor), ``output_list = [torch.empty_like(
  input_list[0]) for _ in range(sp)]`` (the receive buffers ``dist.all_to_all`` writes into), and ``torch.cat(
  output_list, dim=gather_dim).contiguous()``. Its backward is the same all-to-all of the gradient with the two
  dims swapped; it saves nothing for backward. ``all_to_all`` below allocates exactly those tensors — the send
  chunks, the receive buffers and the concatenation — and runs no collective: one process holds rank 0's side,
  and under ``FakeTensorMode`` a tensor has a shape and no values. What NCCL allocates outside PyTorch is not
  counted (as for every collective in a trace).
* **Outputs gathered** — ``ulysses.py::gather_outputs_and_unpad`` → ``Gather``: the local log-probs (entropy,
  values) into ``all_gather_tensor``'s ``torch.empty`` [T_pad], re-concatenated (``torch.cat(output.split(n))``),
  the padding cut off (a view); backward multiplies the gradient by sp (``grad_scaler``) and keeps this rank's
  slice. Then ``pad_input`` back to [k, s] as without Ulysses (``packing.pad_back``).

Values. A trace (``fake.trace_request``) is one process: its receive buffers are allocated and never written,
which is all a fake tensor needs. To check that these are verl's all-to-alls, ``Exchange`` runs the sp ranks as sp
threads on real tensors, each in its ``ranked`` context, and moves what ``dist.all_to_all`` and
``all_gather_into_tensor`` would between them: each rank's logits are then the unsplit forward's rows and their
gradients sum to its gradients (tests/test_trace_ulysses.py).
Not traced: the rolled label row verl keeps whole ([1, T] int64 before slicing; 8·T bytes), the reward model's
gather of its scores (2·T bytes; ``steps.packed.packed_rewards`` indexes the local scores), the attention kernel's
own scratch (as without Ulysses).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

import torch

SP_KEY = "memplan_sequence_parallel"
"""The model config attribute carrying sp (``setup.resolve`` adds it to the config dicts it builds)."""

SPLIT: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("ulysses_split", default=(1, 0))
"""(sp, pad) of the last packed forward: ``gather_outputs`` gathers its per-token outputs with them."""


class Exchange:
    """sp threads standing in for the sp ranks of one group, on real tensors: ``swap`` hands rank j the item each
    rank addressed to it (``dist.all_to_all``; an all-gather addresses the same item to every rank)."""

    def __init__(self, sp: int) -> None:
        self.sp, self.box = sp, [None] * sp
        self.barrier = threading.Barrier(sp, timeout=120)

    def swap(self, rank: int, items: list[torch.Tensor]) -> list[torch.Tensor]:
        self.box[rank] = items
        self.barrier.wait()
        got = [self.box[j][rank] for j in range(self.sp)]
        self.barrier.wait()  # nobody posts the next exchange before everyone has read this one
        return got


PEER: contextvars.ContextVar[tuple[Exchange, int] | None] = contextvars.ContextVar("ulysses_peer", default=None)
"""(exchange, rank) of a thread playing one rank; None: a trace, rank 0, nothing received."""


@contextlib.contextmanager
def ranked(exchange: Exchange, rank: int) -> Iterator[None]:
    """Run as ``rank`` of ``exchange``'s group (one thread each)."""
    token = PEER.set((exchange, rank))
    try:
        yield
    finally:
        PEER.reset(token)


def _rank() -> int:
    peer = PEER.get()
    return 0 if peer is None else peer[1]


def degree(model: torch.nn.Module) -> int:
    """The Ulysses degree a model runs with (1: none)."""
    return int(getattr(model.config, SP_KEY, 1) or 1)


def slice_row(ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
              sp: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ulysses_pad_and_slice_inputs`` for this rank (rank 0 in a trace): the packed [1, T] ``ids`` and ``position_ids`` padded to a
    multiple of sp (pad tokens 0 at positions ``arange(pad)``: one more short sequence) and sliced to the
    rank's T_pad / sp tokens; with the ``cu_seqlens`` of the padded row (its pad sequence appended)."""
    total = ids.shape[1]
    pad = (sp - total % sp) % sp
    if pad:
        ids = torch.nn.functional.pad(ids, (0, pad), value=0)
        position_ids = torch.cat((position_ids, torch.arange(pad, device=position_ids.device).unsqueeze(0)), dim=-1)
        cu_seqlens = torch.cat((cu_seqlens, cu_seqlens.new_tensor([total + pad])))
    n, r = ids.shape[1] // sp, _rank()
    SPLIT.set((sp, pad))
    return ids[:, r * n:(r + 1) * n].contiguous(), position_ids[:, r * n:(r + 1) * n].contiguous(), cu_seqlens


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, sp: int,
               peer: tuple[Exchange, int] | None = None) -> torch.Tensor:
    """``ulysses.py::all_to_all_tensor`` by its allocations: the contiguous send chunks, sp receive buffers
    (``dist.all_to_all``'s outputs: written only between ``Exchange`` threads) and their concatenation."""
    sends = [t.contiguous() for t in torch.tensor_split(x, sp, scatter_dim)]
    receives = [torch.empty_like(sends[0]) for _ in range(sp)]
    if peer is not None:
        for buf, got in zip(receives, peer[0].swap(peer[1], sends)):
            buf.copy_(got)
    # dist.all_to_all(receives, sends) runs here; both lists live until the concatenation has been made
    out = torch.cat(receives, dim=gather_dim).contiguous()
    del sends, receives
    return out


class SeqAllToAll(torch.autograd.Function):
    """``ulysses.py::SeqAllToAll``: the all-to-all forward, the swapped one backward, nothing saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scatter_dim: int, gather_dim: int, sp: int) -> torch.Tensor:  # noqa: ANN001
        ctx.dims, ctx.peer = (scatter_dim, gather_dim, sp), PEER.get()
        return all_to_all(x, scatter_dim, gather_dim, sp, ctx.peer)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        scatter_dim, gather_dim, sp = ctx.dims
        return all_to_all(grad, gather_dim, scatter_dim, sp, ctx.peer), None, None, None


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """verl ``monkey_patch.py::repeat_kv``: [b, s, kv, d] → [b, s, kv·n_rep, d] (expand + reshape: a copy)."""
    if n_rep == 1:
        return x
    b, s, kv, d = x.shape
    return x[:, :, :, None, :].expand(b, s, kv, n_rep, d).reshape(b, s, kv * n_rep, d)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, position_ids: torch.Tensor | None,
              cu_seqlens: torch.Tensor, scale: float, sp: int, kernel) -> torch.Tensor:  # noqa: ANN001
    """``_ulysses_flash_attention_forward`` around ``kernel`` (``packing._VarlenAttention.apply``: q [T, a, d],
    k and v [T, kv, d], cu_seqlens, scale → [T, a, d]): q [1, a, T/sp, d], k and v [1, kv, T/sp, d] in
    (transformers' layout), the attention output [1, T/sp, a, d] out."""
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # transformers' flash_attention_forward: views
    repeats = max(sp // k.shape[2], 1)
    k, v = repeat_kv(k, repeats), repeat_kv(v, repeats)
    # gather_seq_scatter_heads(x, seq_dim=1, head_dim=2): SeqAllToAll(scatter the heads, gather the tokens), one
    # after the other, each rebinding its name (verl frees a repeated local K before V's all-to-all)
    q = SeqAllToAll.apply(q, 2, 1, sp)
    k = SeqAllToAll.apply(k, 2, 1, sp)
    v = SeqAllToAll.apply(v, 2, 1, sp)
    if position_ids is not None:  # torch.distributed.all_gather of the position ids, then torch.concat
        gathered = [torch.empty_like(position_ids) for _ in range(sp)]
        position_ids = torch.concat(gathered, dim=-1)
        del gathered, position_ids
    # _flash_attention_forward → _prepare_from_posids: .contiguous().view(-1, heads, d) (no copy: already so)
    out = kernel(*(t.contiguous().view(-1, t.shape[2], t.shape[3]) for t in (q, k, v)), cu_seqlens, scale)
    # gather_heads_scatter_seq(x, head_dim=2, seq_dim=1): SeqAllToAll(scatter the tokens, gather the heads)
    return SeqAllToAll.apply(out.unsqueeze(0), 1, 2, sp)


class Gather(torch.autograd.Function):
    """``ulysses.py::Gather`` over dim 0: ``all_gather_tensor``'s [n·sp] buffer, re-concatenated; backward: the
    gradient × sp (``grad_scaler``), this rank's slice of it (a view)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sp: int) -> torch.Tensor:  # noqa: ANN001
        ctx.sp, ctx.n, ctx.rank = sp, x.shape[0], _rank()
        output = torch.empty((x.shape[0] * sp, *x.shape[1:]), dtype=x.dtype, device=x.device)
        if (peer := PEER.get()) is not None:
            output.copy_(torch.cat(peer[0].swap(peer[1], [x] * sp)))
        return torch.cat(output.split(x.shape[0], dim=0), dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        return (grad * ctx.sp).split(ctx.n, dim=0)[ctx.rank].contiguous(), None


def gather_outputs(values: torch.Tensor, total: int) -> torch.Tensor:
    """``gather_outputs_and_unpad(values, gather_dim=0, unpad_dim=0, padding_size=pad)``: this rank's per-token
    ``values`` [T_pad / sp] → all ``total`` = T of them (the padding cut off: a view)."""
    sp, pad = SPLIT.get()
    full = Gather.apply(values, sp)
    assert full.shape[0] == total + pad, (full.shape, total, pad)
    return full[:total] if pad else full
