"""The scoring and training forwards of a packed micro batch (``memplan.harness.packing``), as verl runs them.

verl ``workers/actor/dp_actor.py::_forward_micro_batch`` with ``use_remove_padding``: the k sequences' T tokens
in one [1, T] row; ``logits_rmpad`` [T, V] over every packed position; ``logits_rmpad.div_(temperature)`` (in
place); ``logprobs_from_logits(logits_rmpad, input_ids_rmpad_rolled, inplace_backward=not calculate_entropy)``
over all T rows — flash-attn's cross-entropy ('fused'), else a log-softmax ('log-softmax', the tracer's padded
path); the entropy of the same rows when asked; ``pad_input`` of both back to [k, s] (fp32) and the answer's
slice. OpenRLHF's packed actor ('fp32-fused'): every position's logits cast to fp32, flash-attn's cross-entropy
with its out-of-place backward. The critic (``dp_critic.py::_forward_micro_batch``): ``values_rmpad`` [T]
through ``pad_input``, the answer's slice. A reward model: its score at each sequence's last token.

Labels as in ``common``: what the LM head, the log-prob path and the entropy allocate is ``logits``.
"""

from __future__ import annotations

import torch
from torch import nn

from memplan.harness.packing import PACK, last_tokens, packed_forward, pad_back
from memplan.harness.steps.common import KERNEL, _fused, label_backward, label_chain, score_head, token_logprobs
from memplan.harness.steps.entropy import entropy
from memplan.harness.steps.probe import Probe


def packed_logprobs(model: nn.Module, seq: torch.Tensor, n: int, probe: Probe, role: str,
                    entropy_kernel: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the last ``n`` tokens of each row of ``seq`` [k, s] (fp32 [k, n], zeros past a sequence's
    end), the k rows run packed with ``PACK``'s lengths; and their entropy with ``entropy_kernel`` (or None)."""
    lengths = PACK.get()
    out, indices, ids = packed_forward(model, seq, lengths)
    logits = out.logits.squeeze(0)  # [T, V]: verl's logits_rmpad
    del out
    kernel = KERNEL.get()
    with probe.section(category="logits"):
        labels = torch.roll(ids, -1, 1).squeeze(0)  # input_ids_rmpad_rolled
        if logits.requires_grad:
            label_backward(logits, probe, role, "logits")
        if kernel == "fp32-fused":  # OpenRLHF: the 16-bit logits dropped for their fp32 copy
            logits = logits.float()
            if logits.requires_grad:
                label_backward(logits, probe, role, "logits")
        if kernel in ("fused", "fp32-fused"):
            logp = _fused(logits, labels, probe, role, inplace=kernel == "fused" and entropy_kernel is None)
        else:
            logp = token_logprobs(logits, labels, probe, role)
        ent = None
        if entropy_kernel is not None:
            ent = entropy(logits, entropy_kernel, packed=True)
            if ent.requires_grad:
                label_chain(ent, logits, probe, role, "logits")
            ent = pad_back(ent.float(), indices, seq.shape)[:, -n - 1:-1]
        return pad_back(logp, indices, seq.shape)[:, -n - 1:-1], ent


def _head_output(model: nn.Module, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scalar head's per-token output [T] of ``model`` over the packed row, and the row's ``indices``."""
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        _out, indices, _ids = packed_forward(model, seq, PACK.get())
    finally:
        handle.remove()
    return captured[0][0, :, 0], indices


def packed_values(model: nn.Module, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Per-token values of the states before each of the last ``n`` tokens ([k, n], fp32): verl's critic."""
    values, indices = _head_output(model, seq)
    return pad_back(values, indices, seq.shape)[:, -n - 1:-1].float()


def packed_rewards(model: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """Scalar reward per sequence: the score at its last packed token, fp32 [k]."""
    values, _indices = _head_output(model, seq)
    return values[last_tokens(PACK.get(), seq.device)].float()
