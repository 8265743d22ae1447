"""Building blocks the step recipes share: the probe interface, generation, log-probs, optimizer steps.

Every block does what the frameworks do on a GPU (TRL, OpenRLHF, verl, DeepSpeed-Chat), in the same order:

* ``rollout`` — transformers' ``generate`` without ``generate``: prefill with ``logits_to_keep=1``, then one
  token at a time through a ``DynamicCache`` (which grows by concatenation), each next token taken from the
  fp32 copy of the last position's logits (greedy argmax, or Gumbel-max sampling — the same distribution as
  ``multinomial`` without its data-dependent checks). ``decode_steps`` lets the tracer skip the middle of a
  long answer: the cache is grown to its final length in one go and the last steps are run for real, which
  leaves the same tensors alive at the same peak (the cache is largest at the last step).
* ``sequence_logprobs`` — ``log_softmax(logits.float()).gather(ids)`` over the answer positions only
  (``logits_to_keep``); with ``logprob_kernel='fused'`` (``KERNEL``), ``_FusedLogprob``: flash-attn's
  ``cross_entropy_loss`` as verl calls it (``inplace_backward=True``), by its allocations; with 'fp32-fused',
  OpenRLHF 0.11's path: every position's logits, cast to fp32, through the same kernel with its default
  out-of-place backward (``fp32_fused_logprobs``); with 'chunked', ``_ChunkedLogprob`` over the backbone's hidden
  states: TRL 1.16's fused LM head.
* ``Trainer.step`` — the optimizer step of one trained model: with master weights, the 16-bit gradients are
  converted one by one into fp32 gradients of the fp32 masters (and freed), the optimizer steps the masters,
  the masters are copied back into the 16-bit weights (DeepSpeed's bf16/fp16 optimizers, FSDP
  MixedPrecision); without, torch's optimizer steps the weights directly.

Packed micro batches (``Setup.packed_lengths``, ``score_packed_lengths``): ``score`` and
``train_micro_batches`` set ``packing.PACK`` for each micro batch, and the log-prob, value and reward forwards
run the k rows as one [1, T] row (``packed.py``, verl's remove-padding path). The actor's entropy
(``Setup.entropy``, ``entropy.py``) is taken beside its log-probs where verl takes it (``actor_logprobs``).

Micro-batches: scoring and training run ``min(n, 2)`` of their ``n`` micro-batches for real (the second one
sees everything the later ones see: gradients of the earlier ones resident); the outputs of the others are
empty placeholders of the right shape.

Every forward passes ``use_cache=False`` except generation (transformers would otherwise build a KV cache
in every scoring and training forward).

Categories (torch's names, as the estimator uses them): what a model's forward allocates is ``activation``
(saved for backward or transient, with or without autograd), and so is what backward allocates for it (the
gradients of activations, a checkpointed layer's recomputation); the vocabulary-wide tensors of the LM head,
the log-softmax and the loss, forward and backward, are ``logits``; the K/V tensors of a generation cache are
``kv_cache``; the experience kept from rollout to the update (sequences, log-probs, values, advantages) is
the actor's ``buffer``; the optimizer's transients are ``temp``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from memplan.estimator.formulas import CHUNK_TOKENS, CHUNK_VOCAB
from memplan.harness.models import Models
from memplan.harness.packing import PACK
from memplan.harness.setup import Setup
from memplan.harness.steps.entropy import COEF as ENTROPY_COEF
from memplan.harness.steps.entropy import entropy
from memplan.harness.steps.optim import Trainer
from memplan.harness.steps.probe import Probe


@dataclass
class Ctx:
    """What a recipe works with: the models, their trainers, the run's knobs, the probe."""

    setup: Setup
    models: Models
    trainers: dict[str, Trainer]
    probe: Probe
    device: str
    decode_steps: int | None = None
    """Decode steps run for real at each end of a long answer (None: all of them)."""
    vocab: int = field(init=False)

    def __post_init__(self) -> None:
        self.vocab = int(self.models.actor.get_output_embeddings().weight.shape[0])


# -------------------------------------------------------------------------------------------------- labels


def label_logits(model: nn.Module, role: str, probe: Probe) -> None:
    """Label what the LM head allocates (and its gradient) as ``logits`` of the calling role."""
    head = model.get_output_embeddings()
    stack: list = []

    def pre(_module, _args):  # noqa: ANN001, ANN202
        cm = probe.section(category="logits")
        cm.__enter__()
        stack.append(cm)

    def post(_module, _args, out):  # noqa: ANN001, ANN202
        stack.pop().__exit__(None, None, None)
        if out.requires_grad:
            probe.tag_grad(out, role, "logits")

    head.register_forward_pre_hook(pre)
    head.register_forward_hook(post)


def label_backward(tensor: torch.Tensor, probe: Probe, role: str, category: str) -> None:
    """Label what backward allocates in the node that made ``tensor`` (its ``grad_fn``) as ``category``."""
    if tensor.grad_fn is not None:
        _label_node(tensor.grad_fn, probe, role, category)


def label_chain(tensor: torch.Tensor, stop: torch.Tensor, probe: Probe, role: str, category: str) -> None:
    """``label_backward`` on every node of ``tensor``'s graph down to ``stop``'s (an entropy's softmax, products
    and sums: what their backward allocates is ``category``)."""
    seen, end = set(), stop.grad_fn
    nodes = [tensor.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is None or node is end or id(node) in seen or not hasattr(node, "register_prehook"):
            continue
        seen.add(id(node))
        if type(node).__name__ != "AccumulateGrad":
            _label_node(node, probe, role, category)
        nodes.extend(fn for fn, _ in node.next_functions)


def _label_node(node, probe: Probe, role: str, category: str) -> None:  # noqa: ANN001
    """Allocations between the autograd ``node``'s pre-hook and hook are ``(role, category)``."""
    stack: list = []

    def pre(_grad_outputs):  # noqa: ANN001, ANN202
        cm = probe.section(role, category)
        cm.__enter__()
        stack.append(cm)

    def post(_grad_inputs, _grad_outputs):  # noqa: ANN001, ANN202
        stack.pop().__exit__(None, None, None)

    node.register_prehook(pre)
    node.register_hook(post)


def experience(ctx: Ctx, *tensors: torch.Tensor | None) -> None:
    """Label rollout and scoring results kept until the update as the actor's experience buffer."""
    for t in tensors:
        ctx.probe.relabel(t, "actor", "buffer")


def track_models(models: Models, probe: Probe) -> None:
    for role, model in models.roles():
        for p in model.parameters():
            probe.track(p, role, "parameter")
        for b in model.buffers():
            probe.track(b, role, "buffer")
        if model.get_output_embeddings() is not None:
            label_logits(model, role, probe)


# -------------------------------------------------------------------------------------------------- rollout


class _LabelledCache(DynamicCache):
    """A ``DynamicCache`` whose growth is labelled ``kv_cache`` (a subclass: a patched method would make a
    reference cycle and keep the cache alive until the next garbage collection)."""

    probe: Probe
    role: str

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # noqa: ANN001, ANN201
        with self.probe.section(self.role, "kv_cache"):
            out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        self.probe.relabel(layer.keys, self.role, "kv_cache")
        self.probe.relabel(layer.values, self.role, "kv_cache")
        return out


def _new_cache(model: nn.Module, probe: Probe, role: str) -> _LabelledCache:
    cache = _LabelledCache(config=model.config)
    cache.probe, cache.role = probe, role
    return cache


def _grow_cache(cache, length: int, probe: Probe, role: str) -> None:  # noqa: ANN001
    """Jump every layer's K/V to ``length`` tokens (what the skipped decode steps would have left)."""
    with probe.section(role, "kv_cache"):
        for layer in cache.layers:
            b, k, _, d = layer.keys.shape
            layer.keys = layer.keys.new_empty((b, k, length, d))
            layer.values = layer.values.new_empty((b, k, length, d))


def next_token(logits: torch.Tensor, greedy: bool, probe: Probe) -> torch.Tensor:
    """The next token from the last position's logits, upcast to fp32 as ``generate`` does."""
    with probe.section(category="logits"):
        scores = logits[:, -1, :].float()
        if greedy:
            return scores.argmax(-1, keepdim=True)
        noise = torch.empty_like(scores).exponential_()  # Gumbel-max: argmax(scores - log E), E ~ Exp(1)
        return (scores - noise.log()).argmax(-1, keepdim=True)


@torch.no_grad()
def rollout(ctx: Ctx, prompts: torch.Tensor, greedy: bool = False, role: str = "actor") -> torch.Tensor:
    """Generate ``gen_len`` tokens after ``prompts`` with a KV cache; returns prompt + answer ids."""
    model, probe, gen_len = ctx.models.actor, ctx.probe, ctx.setup.gen_len
    model.eval()
    with probe.section(role, "activation"):
        cache = _new_cache(model, probe, role)
        logits = model(input_ids=prompts, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        tok = next_token(logits, greedy, probe)
        del logits
        tokens = [tok]
        keep = ctx.decode_steps
        for t in range(1, gen_len):
            if keep is not None and keep <= t < gen_len - keep:
                if t == keep:  # jump to the state before the last ``keep`` steps
                    _grow_cache(cache, prompts.shape[1] + gen_len - keep - 1, probe, role)
                tokens.append(torch.empty_like(tok))
                continue
            logits = model(input_ids=tok, past_key_values=cache, use_cache=True).logits
            tok = next_token(logits, greedy, probe)
            del logits
            tokens.append(tok)
        del cache
    with probe.section("actor", "buffer"):
        return torch.cat([prompts, *tokens], dim=1)


def make_prompts(ctx: Ctx, n: int) -> torch.Tensor:
    with ctx.probe.section("actor", "other"):
        return torch.randint(0, ctx.vocab, (n, ctx.setup.prompt_len), device=ctx.device)


# -------------------------------------------------------------------------------------------------- forwards


def micro_batches(n: int, size: int) -> list[tuple[int, int, bool]]:
    """(start, end, run) per micro-batch of ``size`` over ``n`` rows; only the first two run."""
    return [(i, min(i + size, n), k < 2) for k, i in enumerate(range(0, n, size))]


KERNEL: contextvars.ContextVar[str] = contextvars.ContextVar("logprob_kernel", default="log-softmax")
"""How log-probs and cross-entropy are taken (set by ``run_steps`` from ``Setup.logprob_kernel``): 'log-softmax',
'fused' (``_FusedLogprob``), 'fp32-fused' (``fp32_fused_logprobs``) or 'chunked' (``_ChunkedLogprob`` over the
backbone's hidden states)."""
FUSED_ROWS = 1024
"""The fused kernel's stand-in takes a row's log-sum-exp in fp32 over 1/``FUSED_ROWS`` of the rows at a time
(the Triton kernel keeps a row block in registers: no copy at all)."""


class _FusedLogprob(torch.autograd.Function):
    """log p(label) per row of 16-bit ``logits`` [N, V], with flash-attn's ``cross_entropy_loss``'s allocations
    (``flash_attn/ops/triton/cross_entropy.py``, verl's ``logprobs_from_logits``): fp32 outputs per row (the
    log-prob and the log-sum-exp it saves for backward); backward writes the logits' gradient into the logits
    (``inplace_backward=True``, verl), or into a new tensor like them (the kernel's default, OpenRLHF). Labels
    below 0 give 0."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, inplace: bool = True) -> torch.Tensor:  # noqa: ANN001
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        step = max(1, n // FUSED_ROWS)
        for i in range(0, n, step):
            lse[i:i + step] = torch.logsumexp(logits[i:i + step].float(), -1)
        safe = labels.clamp(min=0)
        out = logits.gather(-1, safe[:, None]).squeeze(-1).float() - lse
        out = out.masked_fill(labels < 0, 0.0)
        ctx.save_for_backward(logits, safe, lse)
        ctx.inplace = inplace
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        logits, labels, lse = ctx.saved_tensors
        out = logits if ctx.inplace else torch.empty_like(logits)
        n = logits.shape[0]
        step = max(1, n // FUSED_ROWS)
        for i in range(0, n, step):  # d log p(label) / d logits = onehot(label) − softmax, times grad
            rows = slice(i, i + step)
            g = (logits[rows].float() - lse[rows, None]).exp_().mul_(-grad[rows, None])
            g.scatter_add_(-1, labels[rows, None], grad[rows, None])
            out[rows].copy_(g)
        return out, None, None




CHUNK_BLOCK = 16
"""At least this many rows (columns) per block of ``_ChunkedLogprob``'s stand-in folds: its fp32 block copies stay
small (a GPU folds in registers) while the tracer runs few Python iterations."""


class _ChunkedLogprob(torch.autograd.Function):
    """log p(label) of ``hidden`` [N, h] @ ``weight`` [V, h]ᵀ without the [N, V] logits, with the allocations of
    TRL 1.16's fused LM head (``kernels/chunked_logprob.py::_ChunkedLogProbFunction`` on a GPU): seven fp32 running
    statistics per row and one reused [min(N, 4096), min(V, 32768)] tile, folded in registers (here: in
    1/``FUSED_ROWS`` row blocks); backward recomputes each tile, turns it into the logits' gradient in place and
    accumulates the hidden states' and weight's gradients in fp32 (``addmm`` with an fp32 output: here in blocks),
    returned as 16-bit copies."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        n, vocab = hidden.shape[0], weight.shape[0]
        stats = [torch.full((n,), float("-inf"), dtype=torch.float32, device=hidden.device)]
        stats += [torch.zeros(n, dtype=torch.float32, device=hidden.device) for _ in range(6)]
        running_max, sum_exp, target_logit = stats[0], stats[1], stats[6]
        buf = torch.empty((min(n, CHUNK_TOKENS), min(vocab, CHUNK_VOCAB)), dtype=hidden.dtype, device=hidden.device)
        for t0 in range(0, n, CHUNK_TOKENS):
            t1 = min(t0 + CHUNK_TOKENS, n)
            for v0 in range(0, vocab, CHUNK_VOCAB):
                v1 = min(v0 + CHUNK_VOCAB, vocab)
                tile = buf[:t1 - t0, :v1 - v0]
                torch.mm(hidden[t0:t1], weight[v0:v1].t(), out=tile)
                step = max(CHUNK_BLOCK, (t1 - t0) // FUSED_ROWS)
                for i in range(0, t1 - t0, step):  # online log-sum-exp and the label's logit, row block by block
                    rows, block = slice(t0 + i, min(t0 + i + step, t1)), tile[i:i + step].float()
                    top = torch.maximum(running_max[rows], block.amax(-1))
                    rescaled = sum_exp[rows] * (running_max[rows] - top).exp()
                    sum_exp[rows] = rescaled + (block - top[:, None]).exp().sum(-1)
                    running_max[rows] = top
                    local = targets[rows] - v0
                    inside = (local >= 0) & (local < v1 - v0)
                    picked = block.gather(-1, local.clamp(0, v1 - v0 - 1)[:, None]).squeeze(-1)
                    target_logit[rows] = torch.where(inside, picked, target_logit[rows])
        log_z = running_max + sum_exp.log()
        ctx.save_for_backward(hidden, weight, targets, log_z)
        return target_logit - log_z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        hidden, weight, targets, log_z = ctx.saved_tensors
        n, vocab = hidden.shape[0], weight.shape[0]
        needs_hidden, needs_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
        buf = torch.empty((min(n, CHUNK_TOKENS), min(vocab, CHUNK_VOCAB)), dtype=hidden.dtype, device=hidden.device)
        grad = grad.float().contiguous()
        for t0 in range(0, n, CHUNK_TOKENS):
            t1 = min(t0 + CHUNK_TOKENS, n)
            for v0 in range(0, vocab, CHUNK_VOCAB):
                v1 = min(v0 + CHUNK_VOCAB, vocab)
                tile, w = buf[:t1 - t0, :v1 - v0], weight[v0:v1]
                torch.mm(hidden[t0:t1], w.t(), out=tile)
                step = max(CHUNK_BLOCK, (t1 - t0) // FUSED_ROWS)
                for i in range(0, t1 - t0, step):  # d log p(label) / d logits = onehot(label) − softmax, times grad
                    rows, g = slice(t0 + i, min(t0 + i + step, t1)), grad[t0 + i:t0 + i + step, None]
                    block = (tile[i:i + step].float() - log_z[rows, None]).exp_().mul_(-g)
                    local = targets[rows] - v0
                    inside = ((local >= 0) & (local < v1 - v0))[:, None]
                    block.scatter_add_(-1, local.clamp(0, v1 - v0 - 1)[:, None], torch.where(inside, g, 0.0))
                    tile[i:i + step].copy_(block)
                    if grad_hidden is not None:  # acc += tile @ w, accumulated in fp32
                        grad_hidden[rows] += (tile[i:i + step] @ w).float()
                if grad_weight is not None:  # acc += tileᵀ @ hidden, column block by column block
                    cols = max(CHUNK_BLOCK, (v1 - v0) // FUSED_ROWS)
                    for c in range(0, v1 - v0, cols):
                        grad_weight[v0 + c:v0 + c + cols] += (tile[:, c:c + cols].t() @ hidden[t0:t1]).float()
        return (grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
                grad_weight.to(weight.dtype) if grad_weight is not None else None, None)


def _causal_lm(model: nn.Module) -> nn.Module:
    """The causal LM under a peft wrapper (TRL patches it, not the wrapper)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _chunked(model: nn.Module, seq: torch.Tensor, n: int, probe: Probe, role: str) -> torch.Tensor:
    """TRL's fused LM head: the backbone's last hidden states, those of the last ``n`` of the s − 1 positions
    whose next token is scored copied out (TRL: ``hidden_states[mask]``; here a copy of the same size, boolean
    indexing having no fake-tensor shape), ``_ChunkedLogprob`` over them, scattered back ([b, s − 1], fp32)."""
    lm = _causal_lm(model)
    hidden = lm.base_model(input_ids=seq, use_cache=False).last_hidden_state
    b, s, h = hidden.shape
    with probe.section(category="logits"):
        states = hidden.new_empty((b * n, h))
        states.view(b, n, h).copy_(hidden[:, s - 1 - n:s - 1])
        labels = seq.new_empty(b * n)
        labels.view(b, n).copy_(seq[:, s - n:])
        out = _ChunkedLogprob.apply(states, lm.get_output_embeddings().weight, labels)
        if out.requires_grad:
            label_backward(out, probe, role, "logits")
        mask = torch.zeros(b, s - 1, dtype=torch.bool, device=seq.device)
        mask[:, s - 1 - n:] = True
        return out.new_zeros(mask.shape).masked_scatter(mask, out)


def _fused(logits: torch.Tensor, labels: torch.Tensor, probe: Probe, role: str, inplace: bool = True) -> torch.Tensor:
    """``_FusedLogprob`` over [..., V] logits (contiguous: no copy), labelled as logits forward and backward;
    ``inplace``: its backward writes into the logits (verl, unless the entropy needs them: ``packed.py``)."""
    with probe.section(category="logits"):
        out = _FusedLogprob.apply(logits.view(-1, logits.shape[-1]), labels.reshape(-1), inplace)
        if out.requires_grad:
            label_backward(out, probe, role, "logits")
        return out.view(labels.shape)


def fp32_fused_logprobs(model: nn.Module, seq: torch.Tensor, probe: Probe, role: str) -> torch.Tensor:
    """OpenRLHF 0.11's ``Actor.forward``: every position's logits (no ``logits_to_keep``), cast to fp32 with the
    16-bit ones dropped, then ``log_probs_from_logits``: flash-attn's cross-entropy (out-of-place backward) against
    the sequence rolled left by one. The log-probs of the s − 1 positions that have a next token ([b, s − 1])."""
    logits = model(input_ids=seq, use_cache=False).logits
    if logits.requires_grad:
        label_backward(logits, probe, role, "logits")
    with probe.section(category="logits"):
        upcast = logits.float()
        del logits  # OpenRLHF replaces output["logits"] with its fp32 copy
        labels = torch.roll(seq, -1, 1)
        if upcast.requires_grad:
            label_backward(upcast, probe, role, "logits")
        out = _FusedLogprob.apply(upcast.view(-1, upcast.shape[-1]), labels.reshape(-1), False)
        if out.requires_grad:
            label_backward(out, probe, role, "logits")
        return out.view(labels.shape)[:, :-1]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, probe: Probe, role: str) -> torch.Tensor:
    """log p(label) per position: ``log_softmax(logits.float()).gather(labels)`` (fp32)."""
    with probe.section(category="logits"):
        upcast = logits.float()
        logp = upcast.log_softmax(-1)
        picked = logp.gather(-1, labels.unsqueeze(-1))
        if picked.requires_grad:
            for t in (upcast, logp, picked):
                label_backward(t, probe, role, "logits")
        return picked.squeeze(-1)


def chunked_causal_lm_loss(model: nn.Module, seq: torch.Tensor, probe: Probe, role: str) -> torch.Tensor:
    """TRL's SFT loss through its fused LM head: the mean −log-prob of every next token."""
    n = seq.shape[1] - 1
    return -_chunked(model, seq, n, probe, role).sum() / (seq.shape[0] * n)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, probe: Probe, role: str) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss``: fp32 logits, labels shifted left by one (padded with -100), mean
    cross-entropy — written as its two ATen ops (``cross_entropy`` is log-softmax + NLL) to label both."""
    if KERNEL.get() == "fused":  # the mean of the fused kernel's −log-probs over the labelled positions
        shifted = F.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
        logp = _fused(logits, shifted, probe, role)
        return -logp.sum() / (shifted >= 0).sum()
    with probe.section(category="logits"):  # the shifted labels too: counted as the loss's
        upcast = logits.float()
        shifted = F.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
        logp = upcast.view(-1, upcast.shape[-1]).log_softmax(-1)
        loss = F.nll_loss(logp, shifted.view(-1), ignore_index=-100)
        for t in (upcast, logp, loss):
            label_backward(t, probe, role, "logits")
        return loss


def sequence_logprobs(model: nn.Module, seq: torch.Tensor, n: int, probe: Probe, role: str) -> torch.Tensor:
    """Log-probs of the last ``n`` tokens of ``seq`` under ``model`` ([b, n], fp32). Fused: over the n + 1 kept
    positions with the labels shifted (as verl rolls them), the last one masked: no slice of the logits, whose
    backward would allocate their full size again. Packed rows (``PACK`` set): ``packed.packed_logprobs``."""
    return logprobs_and_entropy(model, seq, n, probe, role)[0]


def logprobs_and_entropy(model: nn.Module, seq: torch.Tensor, n: int, probe: Probe, role: str,
                         entropy_kernel: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``sequence_logprobs`` and, with ``entropy_kernel``, the entropy of the same logits rows ([b, n]; verl's
    padded branch: over the answer's logits, ``dp_actor.py::_forward_micro_batch``)."""
    if PACK.get() is not None:
        from memplan.harness.steps.packed import packed_logprobs

        return packed_logprobs(model, seq, n, probe, role, entropy_kernel)
    if entropy_kernel is None:
        return _padded_logprobs(model, seq, n, probe, role), None
    logits = model(input_ids=seq, use_cache=False, logits_to_keep=n + 1).logits
    if logits.requires_grad:
        label_backward(logits, probe, role, "logits")
    if KERNEL.get() == "fused":  # verl: inplace_backward=False when the entropy reads the logits too
        logp = _fused(logits, F.pad(seq[:, -n:], (0, 1), value=-1), probe, role, inplace=False)[:, :-1]
    else:
        logp = token_logprobs(logits[:, :-1], seq[:, -n:], probe, role)
    with probe.section(category="logits"):
        ent = entropy(logits[:, :-1], entropy_kernel, packed=False)
        if ent.requires_grad:
            label_chain(ent, logits, probe, role, "logits")
    return logp, ent.float()


def _padded_logprobs(model: nn.Module, seq: torch.Tensor, n: int, probe: Probe, role: str) -> torch.Tensor:
    if KERNEL.get() == "chunked":  # the answer's positions: those whose next token is one of the last n
        return _chunked(model, seq, n, probe, role)[:, -n:]
    if KERNEL.get() == "fp32-fused":
        return fp32_fused_logprobs(model, seq, probe, role)[:, -n:]
    logits = model(input_ids=seq, use_cache=False, logits_to_keep=n + 1).logits
    if KERNEL.get() == "fused":
        if logits.requires_grad:
            label_backward(logits, probe, role, "logits")
        labels = F.pad(seq[:, -n:], (0, 1), value=-1)
        return _fused(logits, labels, probe, role)[:, :-1]
    logits = logits[:, :-1]
    if logits.requires_grad:
        label_backward(logits, probe, role, "logits")
    return token_logprobs(logits, seq[:, -n:], probe, role)


def score_head(model: nn.Module) -> nn.Module:
    """The scalar head of a sequence-classification model (peft's wrapper, if any)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "score":
            return module
    raise LookupError("no 'score' head")


def token_values(model: nn.Module, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Per-token values of the states before each of the last ``n`` tokens ([b, n], fp32): critic."""
    if PACK.get() is not None:
        from memplan.harness.steps.packed import packed_values

        return packed_values(model, seq, n)
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(input_ids=seq, use_cache=False)
    finally:
        handle.remove()
    return captured[0][:, -n - 1:-1, 0].float()


def rewards(model: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """Scalar reward per sequence (last token's score), fp32."""
    if PACK.get() is not None:
        from memplan.harness.steps.packed import packed_rewards

        return packed_rewards(model, seq)
    return model(input_ids=seq, use_cache=False).logits[:, 0].float()


@torch.no_grad()
def score(ctx: Ctx, fn, seq: torch.Tensor, role: str, shape_tail: tuple[int, ...],  # noqa: ANN001
          size: int | None = None) -> torch.Tensor:
    """Run ``fn(rows)`` over micro-batches of ``seq`` (``size`` rows, default the run's scoring micro batch)
    without autograd."""
    outs = []
    with ctx.probe.section(role, "activation"):
        for start, end, run in micro_batches(seq.shape[0], size or ctx.setup.score_micro_batch_size):
            if run:
                with packed(ctx.setup.score_packed_lengths, end - start):
                    outs.append(fn(seq[start:end]))
            else:
                outs.append(torch.empty((end - start, *shape_tail), device=seq.device))
    with ctx.probe.section("actor", "buffer"):
        return torch.cat(outs)


def reference_logprobs(ctx: Ctx, seq: torch.Tensor, n: int, size: int | None = None) -> torch.Tensor | None:
    """Reference log-probs: the separate reference model, or the actor with its LoRA adapter disabled."""
    models = ctx.models
    if models.reference is not None:
        return score(ctx, lambda s: sequence_logprobs(models.reference, s, n, ctx.probe, "reference"),
                     seq, "reference", (n,), size)
    if models.shared_reference:
        with models.actor.disable_adapter():
            return score(ctx, lambda s: sequence_logprobs(models.actor, s, n, ctx.probe, "reference"),
                         seq, "reference", (n,), size)
    return None


@contextlib.contextmanager
def packed(lengths: tuple[int, ...], rows: int) -> Iterator[None]:
    """Run a micro batch of ``rows`` rows packed with the first ``rows`` of ``lengths`` (none: padded)."""
    token = PACK.set(lengths[:rows] if lengths else None)
    try:
        yield
    finally:
        PACK.reset(token)


def actor_logprobs(ctx: Ctx, seq: torch.Tensor, n: int, phase: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The actor's log-probs of the last ``n`` tokens, with its entropy where ``Setup.entropy`` names ``phase``
    ('scoring': verl's old-log-prob forward, for its metrics; 'update': the loss's entropy bonus)."""
    s = ctx.setup
    kernel = s.entropy_kernel if phase in s.entropy.split("+") else None
    return logprobs_and_entropy(ctx.models.actor, seq, n, ctx.probe, "actor", kernel)


def old_logprobs(ctx: Ctx, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Scoring: the actor's old log-probs of the last ``n`` tokens ([N, n], the experience buffer); the entropy,
    when taken, is dropped with the micro batch (verl keeps [N, n] fp32 of it for its metric)."""
    return score(ctx, lambda x: actor_logprobs(ctx, x, n, "scoring")[0], seq, "actor", (n,))


def train_micro_batches(ctx: Ctx, role: str, n_rows: int, loss_fn, size: int | None = None) -> None:  # noqa: ANN001
    """Forward + ``loss_fn(start, end)`` + backward per micro-batch of ``size`` rows; gradients accumulate."""
    trainer, probe = ctx.trainers[role], ctx.probe
    trainer.model.train()
    for start, end, run in micro_batches(n_rows, size or ctx.setup.micro_batch_size):
        if not run:
            continue
        with probe.section(role, "activation"), packed(ctx.setup.packed_lengths, end - start):
            loss = loss_fn(start, end)
            loss.backward()
        del loss
        for p in trainer.params:
            probe.relabel(p.grad, role, "gradient")
    trainer.model.eval()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref) per token (TRL GRPO, verl ``low_var_kl``)."""
    d = ref_logp - logp
    return d.exp() - d - 1



def clipped_policy_update(ctx: Ctx, n: int, seq: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                          ref: torch.Tensor | None, clip: float, kl_coef: float) -> None:
    """PPO's and GRPO's actor update: the clipped surrogate −min(ρA, clip(ρ)A) per token, plus kl_coef · k3 KL
    to the reference when there is one; backward per micro-batch, optimizer step."""
    probe, g = ctx.probe, ctx.setup.gen_len
    with probe.phase("actor_update", n):
        def loss(a: int, b: int) -> torch.Tensor:
            logp, ent = actor_logprobs(ctx, seq[a:b], g, "update")
            ratio = (logp - old[a:b]).exp()
            per_token = -torch.min(ratio * adv[a:b], ratio.clamp(1 - clip, 1 + clip) * adv[a:b])
            if ref is not None:
                per_token = per_token + kl_coef * kl_k3(logp, ref[a:b])
            if ent is not None:  # verl: pg_loss − entropy_coeff · entropy
                per_token = per_token - ENTROPY_COEF * ent
            return per_token.mean()

        train_micro_batches(ctx, "actor", seq.shape[0], loss)
        ctx.trainers["actor"].step()


def reinforce_update(ctx: Ctx, n: int, seq: torch.Tensor, adv: torch.Tensor) -> None:
    """ReMax's and RLOO's actor update: REINFORCE, −A · Σ log π over the answer; backward per micro-batch,
    optimizer step."""
    probe, g = ctx.probe, ctx.setup.gen_len
    with probe.phase("actor_update", n):
        def loss(a: int, b: int) -> torch.Tensor:
            logp, ent = actor_logprobs(ctx, seq[a:b], g, "update")
            loss = -(adv[a:b] * logp).sum(-1).mean()
            return loss - ENTROPY_COEF * ent.mean() if ent is not None else loss

        train_micro_batches(ctx, "actor", seq.shape[0], loss)
        ctx.trainers["actor"].step()
