"""OpenRLHF's ring attention (``--ds.ring_attn_size`` = sp, ``--ds.ring_attn_head_stride`` = s) by its allocations.

OpenRLHF @3c3be62 ``utils/deepspeed/deepspeed.py::setup_ring_attn`` calls ring-flash-attention's
``substitute_hf_flash_attn(group, ring_head_stride)``; its ``adapters/hf_adapter.py`` replaces transformers'
``_flash_attention_forward`` with ``llama3_flash_attn_varlen_func(q.squeeze(0), k.squeeze(0), v.squeeze(0), ...)``
(ring-flash-attention @8996282 ``llama3_flash_attn_varlen.py``). Each GPU holds T/sp tokens of the packed row
(``ring_attn_utils.py::unpad_and_slice_tensor``, padded to a multiple of sp as ``harness.ulysses.slice_row`` does).

* **Forward** — ``Llama3FlashAttnVarlenFunc.forward``: ``k.contiguous()``, ``v.contiguous()`` (k arrives as the
  transposed RoPE output: a copy; v's double transpose is contiguous: none), then
  ``llama3_flash_attn_varlen_forward``: ``kv_buffer`` and ``kv_buffer_copy`` ``(2, t·sp, s, d)``, the send chunks
  ``k[:, i:i + s].contiguous()`` (copies unless s = k), one flash call per chunk of s KV heads (its q heads a·s/k),
  ``torch.cat`` of the outputs and of the fp32 lse; saved: q, k, v, out, lse.
* **Backward** — ``llama3_flash_attn_varlen_backward``: the two K/V buffers again, ``dkv_buffer`` (their gradient,
  reduce-scattered back), ``kv_contiguous_buffer`` ``(2, t, s, d)`` when s < k, ``dq``, ``dk``, ``dv``.

The all-gathers and reduce-scatters move no data here (rank 0 of a trace: nothing received), as
``harness.ulysses``'s do in a trace. The flash kernels are ``packing._VarlenAttention``'s allocations (its output
and fp32 lse; its backward scratch is not counted, as without the ring). Not wired into the packed step: the
per-layer terms are held to ``formulas.ring_*_transient_per_token`` by tests/test_ring_attention.py.
"""

from __future__ import annotations

import torch


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sp: int, stride: int) -> tuple[torch.Tensor, ...]:
    """``llama3_flash_attn_varlen_forward``: q [t, a, d], k and v [t, kv, d] (contiguous) → (out, lse)."""
    t, kv, d = k.shape
    a = q.shape[1]
    assert kv % stride == 0, (kv, stride)  # the library's own assert
    kv_buffer = torch.empty((2, t * sp, stride, d), dtype=k.dtype, device=k.device)
    kv_buffer_copy = torch.empty_like(kv_buffer)
    k_0, v_0 = k[:, :stride].contiguous(), v[:, :stride].contiguous()
    kv_buffer_copy[0, :t].copy_(k_0)  # comm.all_gather(kv_buffer_copy[0], k_0): this rank's part
    kv_buffer_copy[1, :t].copy_(v_0)
    out_list, lse_list = [], []
    send_k = send_v = None
    for i in range(0, kv, stride):
        kv_buffer, kv_buffer_copy = kv_buffer_copy, kv_buffer
        if i < kv - stride:
            send_k = k[:, i + stride:i + 2 * stride].contiguous()
            send_v = v[:, i + stride:i + 2 * stride].contiguous()
            kv_buffer_copy[0, :t].copy_(send_k)
            kv_buffer_copy[1, :t].copy_(send_v)
        heads = slice(i * a // kv, (i + stride) * a // kv)
        out_list.append(torch.empty((t, heads.stop - heads.start, d), dtype=q.dtype, device=q.device))
        lse_list.append(torch.empty((heads.stop - heads.start, t), dtype=torch.float32, device=q.device))
    out = torch.cat(out_list, dim=1)
    lse = torch.cat(lse_list, dim=-2)
    del kv_buffer, kv_buffer_copy, k_0, v_0, send_k, send_v, out_list, lse_list
    return out, lse


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sp: int,
              stride: int) -> tuple[torch.Tensor, ...]:
    """``llama3_flash_attn_varlen_backward``: its buffers, ``dq``, ``dk``, ``dv`` (the gradients written per chunk)."""
    t, kv, d = k.shape
    kv_buffer = torch.empty((2, t * sp, stride, d), dtype=k.dtype, device=k.device)
    kv_buffer_copy = torch.empty_like(kv_buffer)
    dkv_buffer = torch.empty((2, t * sp, stride, d), dtype=k.dtype, device=k.device)
    contiguous = torch.empty((2, t, stride, d), dtype=k.dtype, device=k.device) if stride != kv else None
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    k_0, v_0 = k[:, :stride].contiguous(), v[:, :stride].contiguous()
    send_k = send_v = None
    for i in range(0, kv, stride):
        dkv_buffer.zero_()
        kv_buffer, kv_buffer_copy = kv_buffer_copy, kv_buffer
        if i < kv - stride:
            send_k = k[:, i + stride:i + 2 * stride].contiguous()
            send_v = v[:, i + stride:i + 2 * stride].contiguous()
        # _flash_attn_varlen_backward writes dq[:, heads] and dkv_buffer[:, local_k_slice]; reduce_scatter_tensor
        # sums dkv_buffer into dk_i, dv_i (this rank's first t rows here)
        dk_i, dv_i = (contiguous[0], contiguous[1]) if contiguous is not None else (dk, dv)
        dk_i.copy_(dkv_buffer[0, :t].view_as(dk_i))
        dv_i.copy_(dkv_buffer[1, :t].view_as(dv_i))
        if contiguous is not None:
            dk[:, i:i + stride] = dk_i
            dv[:, i:i + stride] = dv_i
    del kv_buffer, kv_buffer_copy, dkv_buffer, contiguous, k_0, v_0, send_k, send_v
    return dq, dk, dv


class RingAttention(torch.autograd.Function):
    """``Llama3FlashAttnVarlenFunc``: q [t, a, d], k and v [t, kv, d] → out [t, a, d]; saves q, k, v, out, lse."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # noqa: ANN001
                sp: int, stride: int) -> torch.Tensor:
        k, v = k.contiguous(), v.contiguous()
        out, lse = _forward(q, k, v, sp, stride)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.sp, ctx.stride = sp, stride
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):  # noqa: ANN001, ANN205
        q, k, v, _out, _lse = ctx.saved_tensors
        return (*_backward(dout, q, k, v, ctx.sp, ctx.stride), None, None)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sp: int, stride: int) -> torch.Tensor:
    """hf_adapter's path from transformers' attention interface: q [1, a, t, d], k and v [1, kv, t, d] in
    (transformers' layout; ``flash_attention_forward`` transposes them, the adapter squeezes the batch) →
    [1, t, a, d]."""
    q, k, v = (x.transpose(1, 2).squeeze(0) for x in (query, key, value))
    return RingAttention.apply(q, k, v, sp, stride).unsqueeze(0)
