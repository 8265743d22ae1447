"""The actor's entropy over the vocabulary, the way the frameworks take it (``Setup.entropy_kernel``).

* 'eager' — verl's ``utils/torch_functional.py::entropy_from_logits``: ``softmax(logits)``, then
  ``logsumexp(logits) − sum(pd · logits)``, in the logits' dtype, over the whole tensor at once.
* 'fp32-chunked' — verl's ``entropy_from_logits_with_chunking(chunk_size=2048)``: each 2048-row chunk cast to
  fp32, its softmax and the product, written into an fp32 [rows] output. verl calls it on the packed
  ``logits_rmpad`` only (``dp_actor.py::_forward_micro_batch``); its padded branch calls ``entropy_from_logits``
  whatever the option, and so does the tracer on padded rows.
* 'chunked' — TRL's ``trainer/utils.py::entropy_from_logits(chunk_size=128)``: the logits reshaped to
  [rows, V], per 128-row chunk ``log_softmax``, ``exp`` and ``−(exp · logps).sum(-1)``, concatenated.

verl's default, the same ``entropy_from_logits`` under ``torch.compile`` (``use_torch_compile``), is not run:
a compiled kernel's allocations are its generated code's, which no fake tensor reproduces (``setup.resolve``
refuses 'compiled'). Where: verl's old-log-prob forward takes it for its metrics (``fsdp_workers.py::
compute_log_prob``: ``calculate_entropy = not is_lora``), the update when ``entropy_coeff != 0``
(``dp_actor.py::update_policy``); the recipes call ``entropy`` where ``Setup.entropy`` says.

Everything here is labelled ``logits`` by the caller (a vocabulary-wide term, as the estimator files it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VERL_CHUNK = 2048
"""verl ``entropy_from_logits_with_chunking``'s default ``chunk_size``."""
TRL_CHUNK = 128
"""TRL ``entropy_from_logits``'s default ``chunk_size``."""
COEF = 0.001
"""The entropy bonus in the update loss (verl ``entropy_coeff``; its value moves no memory)."""


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """verl's eager entropy: H = logsumexp(z) − Σ softmax(z)·z per row, in the logits' dtype."""
    pd = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def entropy_with_chunking(logits: torch.Tensor, chunk_size: int = VERL_CHUNK) -> torch.Tensor:
    """verl's ``entropy_from_logits_with_chunking`` over [rows, V] logits: fp32 chunks, fp32 output [rows]."""
    entropy = torch.zeros(logits.shape[0], device=logits.device)
    for i in range(0, logits.shape[0], chunk_size):
        chunk = logits[i:i + chunk_size].float()
        pd = F.softmax(chunk, dim=-1)
        entropy[i:i + chunk_size] = torch.logsumexp(chunk, dim=-1) - torch.sum(pd * chunk, dim=-1)
    return entropy


def trl_entropy(logits: torch.Tensor, chunk_size: int = TRL_CHUNK) -> torch.Tensor:
    """TRL's ``entropy_from_logits``: per 128-row chunk of the [rows, V] reshape, −Σ exp(logp)·logp."""
    shape, vocab = logits.shape[:-1], logits.shape[-1]
    parts = []
    for chunk in logits.reshape(-1, vocab).split(chunk_size, dim=0):
        logps = F.log_softmax(chunk, dim=-1)
        parts.append(-(torch.exp(logps) * logps).sum(-1))
    return torch.cat(parts).reshape(shape)


def entropy(logits: torch.Tensor, kernel: str, packed: bool) -> torch.Tensor:
    """The entropy of every row of ``logits`` [..., V] with ``kernel`` (see the module docstring)."""
    if kernel == "chunked":
        return trl_entropy(logits)
    if kernel == "fp32-chunked" and packed:
        return entropy_with_chunking(logits)
    return entropy_from_logits(logits)
