"""Algorithms as recipes: which models are resident, and what each phase runs, in order.

Every recipe returns ``{phase: [activities]}``; an activity is one generation, forward or training step
with the transient bytes it adds on top of the resident models. Knobs and their memory effect:

* ``gradient_checkpointing`` — the training forward keeps each layer's input (e·h per token) and recomputes
  one layer at a time in backward, instead of keeping every layer's saved tensors.
* ``engine`` and LoRA — peft keeps adapters in fp32, but DeepSpeed casts the whole module to the run's dtype
  at ``deepspeed.initialize`` (``engine.py::_configure_distributed_model``): 16-bit adapters, with masters.
* ``attention='eager'`` — adds the b·a·s² fp32 softmax and its bf16 copy per layer.
* ``rollout_engine`` — 'hf': KV cache grows to prompt + answer; 'vllm': reserves ``gpu_memory_utilization``
  × the GPU for its own weights and KV cache during rollout, asleep (freed) in the other phases; 'remote':
  generation runs on other GPUs (an inference server), the training GPUs only send it the actor's weights,
  gathered one unit at a time under ZeRO-3/FSDP (TRL and OpenRLHF sync module by module);
  'hybrid-engine': DeepSpeed-Chat's (and ReMax's) trainer on DeepSpeed 0.10.3 + transformers 4.31
  (its terms live in ``dschat``): the engine gathers the actor's full weights (ZeRO-3) and keeps its inference
  workspace (KV cache included) in every phase; make-experience keeps the actor's and reference's
  ``past_key_values`` and full-sequence logits alive together; the log-prob path covers every position;
  attention is eager (4.31 has no SDPA path); PPO's actor logits outlive the critic's update.
* ``packing``, ``max_tokens_per_gpu``, ``gen_len_mean`` — a scoring or training forward holds the tokens of its
  micro batch (``tokens.micro_batch``: padded to the longest, packed at the mean length, or capped), and a packed
  one takes logits at every position; HF generate's KV cache stays at the longest sequence.
* ``sequence_parallel`` — Ulysses: each GPU holds its share of a micro batch's tokens; its layers save the
  all-to-all'd attention output and K/V repeated to the sp size (``formulas.ulysses_saved_bytes_per_token``).
  With ``sequence_parallel_mode='ring'`` (OpenRLHF): the same split, nothing more saved; the K/V all-gathered in
  chunks of ``ring_head_stride`` heads are transients (``formulas.ring_*_transient_per_token``).
* ``entropy`` — the actor's entropy over the vocabulary in its old log-prob forward (verl's metrics) or in its
  loss (``formulas.entropy_beside_logprobs_bytes``): its own moment beside what the log-prob path keeps; verl's
  fused cross-entropy then writes its gradient out of place.
* ``group_size`` — completions per prompt: multiplies the rollout's KV cache and the experience buffer.
* ReMax's greedy pass runs after the sampled one: same peak, twice the experience buffer.
* micro-batches — when an update runs more than one micro-batch, the gradients of the earlier ones are alive
  during the later ones' forward and backward.
* ``idle_offload`` — verl's ``param_offload`` / ``optimizer_offload`` (its FSDP engine's train and eval contexts,
  ``BaseEngineCtx._context_switch``, verl 0.9): a trained role's weight shards come back to the GPU for its own
  forwards and updates, its optimizer states for its updates; both wait on the CPU otherwise (during a vLLM
  rollout, the actor's weights sync to vLLM and go back). Under engine 'torch' it is ``Module.to('cpu')`` of the
  whole module (AgileRL's ``use_memory_efficient_params``: base and adapters; the optimizer's states stay): back
  for the role's forwards and updates, and read on the host to sync an engine that keeps its own weights.

An activity is one moment: things alive at the same time. A step of the recipe whose peak can fall at two
different moments (a generation's prefill or its last decode step; a forward's layers or its log-softmax)
is two activities, and the ledger takes the larger. What stays alive across steps (DeepSpeed's
``BF16_Optimizer`` gradients, the hybrid engine's workspace) is given to every activity as shared items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import NamedTuple

from memplan.estimator.dschat import (
    actor_logits_held,
    dschat_experience,
    generation_logits,
    hybrid,
    hybrid_engine_workspace,
    logprob_loss,
    tp_generation,
)
from memplan.estimator.formulas import (
    LayerActivation,
    backward_transient_per_token,
    chunked_logprob_bytes,
    dequantized_weight_bytes,
    entropy_beside_logprobs_bytes,
    entropy_bytes,
    final_norm_bytes_per_token,
    fp32_fused_logprob_bytes,
    fused_logprob_bytes,
    kv_cache_bytes,
    layer_forward_transient_per_token,
    logprob_logits_bytes,
    norm_backward_transient_per_token,
    norm_input_bytes_per_token,
    per_layer_inputs_bytes_per_token,
    row_chunk_rows,
    row_chunked_logprob_bytes,
    saved_bytes_per_token,
    shared_kv_bytes_per_token,
    tied_embedding_gradient_sum_bytes,
    ring_backward_transient_per_token,
    ring_forward_transient_per_token,
    ulysses_forward_transient_per_token,
    ulysses_saved_bytes_per_token,
)
from memplan.estimator.ledger import Activity, Item, keep_alive
from memplan.estimator.parallel import States, Units, frozen_states, trainable_states
from memplan.estimator.resolve import RoleSetup, Run
from memplan.specs import ModelSpec

EXPERIENCE_BYTES_PER_TOKEN = 8 + 8 + 2 * 4
"""int64 token ids and attention mask over every token, and fp32 per-token results over the answer (old and
reference log-probs; PPO adds values, returns, advantages): about 8 bytes per token of prompt + answer."""


@lru_cache(maxsize=1024)
def _saved_per_token(spec: ModelSpec, e: int, seq_len: int, weights_trainable: bool, lora_rank: int,
                     lora_targets: str, lora_dtype_bytes: int, eager_attention: bool, tp: int) -> LayerActivation:
    """``saved_bytes_per_token``, cached on positional arguments: the same layer geometry recurs across requests."""
    return saved_bytes_per_token(spec, e, seq_len=seq_len, weights_trainable=weights_trainable, lora_rank=lora_rank,
                                 lora_targets=lora_targets, lora_dtype_bytes=lora_dtype_bytes,
                                 eager_attention=eager_attention, tp=tp)


_forward_per_token = lru_cache(maxsize=1024)(layer_forward_transient_per_token)  # likewise


def _eager(run: Run) -> bool:
    """Eager attention: asked for, or implied by the hybrid engine (transformers 4.31 has no SDPA path)."""
    return run.eager_attention or hybrid(run)


def _adapter_bytes(r: RoleSetup, e: int) -> int:
    """Bytes per element of LoRA adapters: peft's fp32, or the run's dtype ``e`` under DeepSpeed (module cast)."""
    return e if r.sharding.engine == "deepspeed" else 4


def _lora_mlp(r: RoleSetup, run: Run) -> bool:
    """The role runs LoRA adapters on its MLP (``lora_targets='all-linear'``)."""
    return r.lora and run.lora_targets == "all-linear"


def _fsdp_units(r: RoleSetup) -> Units | None:
    """How FSDP2 wraps the role's model (``engine='fsdp'`` over N > 1 GPUs): its layers, its root and the head
    whose gradient backward makes first (a tied LM head's too; a scalar head's h). On one GPU FSDP2 keeps no
    all-gather outputs: ``parallel``'s per-layer approximation is kept (traced within 4 %)."""
    if r.sharding.engine != "fsdp" or r.sharding.dp == 1:
        return None
    spec = r.spec
    head = (spec.lm_head_params or spec.vocab_size * spec.hidden_size) if r.lm_head else (
        r.num_params - spec.backbone_params)
    return Units(layer=spec.layer_params, root=r.num_params - spec.decoder_params, head=head)


def _gathered(st: States, first: bool) -> int:
    """Weights gathered inside a layer of a forward (FSDP2: of the model's first forward in the step, or not)."""
    if st.fsdp is None:
        return st.gather
    return st.fsdp.first_forward if first else st.fsdp.forward


def _fsdp_at(st: States, moment: str) -> int | None:
    """FSDP2's unsharded bytes at ``moment`` (a field of ``Unsharded``); None without FSDP2."""
    return None if st.fsdp is None else getattr(st.fsdp, moment)


def _fsdp_copy_out(act: Activity, role: str, st: States, first: bool) -> None:
    """FSDP2's copy-out moment in a forward: a unit unsharded beside two all-gather outputs, before the layer's
    transients exist; added as the part above what the activity already counts (``_gathered`` + transients)."""
    if st.fsdp is None:
        return
    during, copy = (st.fsdp.first_forward, st.fsdp.first_copy_out) if first else (st.fsdp.forward, st.fsdp.copy_out)
    transient = sum(item[2] for item in act.items if item[0] == role and item[1] in ("activation", "temp", "logits"))
    act.add(role, "parameter", copy - during - transient, "FSDP2 copy-out: the previous unit's all-gather output"
            if st.fsdp.version == 2 else "FSDP1 unshard: the bf16 copy of the shard being all-gathered")


def role_states(r: RoleSetup, run: Run) -> States:
    """Resident and update-time model states of one role on one GPU."""
    return model_states(r, run.e, run.lora_rank)


@lru_cache(maxsize=1024)
def model_states(r: RoleSetup, e: int, lora_rank: int) -> States:
    """``role_states`` on the only fields of the run it reads (cached: roles recur across a sweep's or a plan's
    requests, and ``resolve`` makes one ``RoleSetup`` per distinct role)."""
    if r.shares_weights_with:  # the base is the other role's; a frozen adapter of its own (ref 'lora-adapter')
        if not r.adapter_params:
            return States()
        return frozen_states(r.adapter_params, _adapter_bytes(r, e), lora_rank * r.spec.hidden_size, 0, e,
                             r.sharding)
    largest_param, largest_unit, units = r.spec.largest_matrix, r.spec.largest_unit, _fsdp_units(r)
    if not r.trainable:
        return frozen_states(r.num_params, r.base_bytes_per_param, largest_param, largest_unit, e, r.sharding, units)
    if not r.lora:
        return trainable_states(r.num_params, largest_param, largest_unit, e, r.sharding, units)
    base = frozen_states(r.num_params, r.base_bytes_per_param, largest_param, largest_unit, e, r.sharding, units)
    adapter = trainable_states(r.trainable_params, lora_rank * r.spec.hidden_size, 0,
                               _adapter_bytes(r, e), r.sharding)
    return States(
        parameter=base.parameter + adapter.parameter, optstate=adapter.optstate, buffer=adapter.buffer,
        gradient=adapter.gradient, gradient_persists=adapter.gradient_persists, step_temp=adapter.step_temp,
        gather=base.gather + adapter.gather, full_gather=base.full_gather, host=base.host + adapter.host,
        fsdp=base.fsdp,
    )


def generate(run: Run, actor: RoleSetup, st: States, name: str, first: bool = True) -> list[Activity]:
    """One generation call, ``rollout_seqs`` sequences, as two moments: the prefill (the prompt's K/V and one
    layer's intermediates over every prompt token) and the last decode step (the full cache). ``first``: the
    prefill is the actor's first forward in the step (FSDP2 at stage 2 unshards its layers there)."""
    # a sharded actor gathered whole (the hybrid engine always; TRL's ds3_gather_for_generation, and its sync of a
    # PEFT actor to vLLM), else one unit
    whole = None
    if st.gather or actor.sharding.offload_params:
        if run.rollout_engine == "hybrid-engine":
            whole = ("actor", "parameter", st.full_gather, "hybrid engine gathers the full actor for generation")
        elif run.gather_for_generation:
            whole = ("actor", "parameter", st.full_gather, "the whole actor gathered (gather_for_generation)")

    def weights(first_: bool, note: str = "ZeRO-3 layer gather") -> Item:
        return whole or ("actor", "parameter", _gathered(st, first_), note)

    loaded = _loaded(actor, st, False) if run.idle_offload else []  # idle offload: the shards, back to generate
    # a plain module parked on the host (engine 'torch': ``Module.to('cpu')``) is read where it lies to sync an
    # engine that keeps its own weights: nothing to gather, so nothing comes back (AgileRL 0151c660
    # ``_prepare_vllm_for_generation``, base.py:6257, parks it before ``wake_up``; ``_move_lora_to_vllm``,
    # base.py:5111, exports the adapter from it to disk and ``add_lora`` reads that); shards must be gathered on
    # the GPU (FSDP, DeepSpeed)
    sync_loaded = [] if actor.sharding.engine == "torch" else loaded

    if run.rollout_engine == "vllm":
        act = Activity(name)
        if run.vllm_sleep:  # else the reservation is kept in every activity (``_vllm_awake``)
            pool = vllm_pool(run, actor)
            act.add("actor", "other", _vllm_bytes(run) - pool.activations, "vLLM reserves gpu_memory_utilization × "
                    "GPU memory (its weights + KV cache), less its profile run's activations, freed after it")
            act.add("actor", "activation", vllm_prefill_activation_bytes(run, actor),
                    "vLLM's prefill of the generation's prompts (one layer's intermediates)")
        # the weight sync before it: the actor's weights (shards loaded back under idle offload, gathered one
        # unit at a time or whole) beside vLLM's weights, woken alone in sleep mode (its KV cache after)
        sync = Activity(f"{name}: weight sync to vLLM", list(sync_loaded))
        if run.vllm_sleep:
            sync.add("actor", "other", min(-(-actor.num_params * run.e // run.vllm_tp), _vllm_bytes(run)),
                     "vLLM's weights, woken for the sync")
        # not a forward: one parameter gathered at a time (verl's per-tensor full_tensor, TRL's per-parameter
        # gather), unless the whole actor is
        sync.items.append(whole or ("actor", "parameter", min(st.gather, actor.spec.largest_matrix * run.e),
                                    "gathered weights, one parameter at a time"))
        sync.add("actor", "buffer", run.sync_bucket_bytes, "the bucket the weights are packed into")
        return [act, sync]

    if run.rollout_engine == "remote":  # generated elsewhere: the weight sync is all that runs here
        sync = Activity(f"{name}: weight sync to the remote engine",
                        [*sync_loaded, weights(first, "gathered weights, one unit at a time")])
        sync.add("actor", "buffer", run.sync_bucket_bytes, "the bucket the weights are packed into")
        return [sync]
    spec, seqs, tokens, e, tp = actor.spec, run.rollout_seqs, run.prompt_len + run.gen_len, run.e, run.tp
    if run.rollout_engine == "hybrid-engine":  # K/V in the engine's workspace (``dschat``)
        if whole is not None and run.inference_tp > 1:  # ZeRO-3: layers sliced over the inference TP group
            return tp_generation(run, actor, name)
        prefill = Activity(f"{name}: prefill", [weights(first)])
        decode = Activity(f"{name}: last decode step", [weights(False)])
        generation_logits(run, actor, prefill, decode)
        return [prefill, decode]
    per_token = _forward_per_token(spec, e, tp, _lora_mlp(actor, run))
    kv = kv_cache_bytes(spec, tokens, seqs, e, tp)
    prefill = Activity(f"{name}: prefill", [
        weights(first),
        ("actor", "kv_cache", kv_cache_bytes(spec, run.prompt_len, seqs, e, tp),
         f"{seqs} seqs × {run.prompt_len} prompt tokens"),
        ("actor", "activation", int(seqs * run.prompt_len * per_token), "one layer's intermediates"),
    ])
    decode = Activity(f"{name}: last decode step", [
        weights(False),
        ("actor", "kv_cache", kv, f"{seqs} seqs × {tokens} tokens"),
        ("actor", "temp", kv // (2 * spec.num_layers),
         "DynamicCache grows by concatenation: one layer's old K or V beside the new one"),
        ("actor", "activation", int(seqs * per_token), "one token's intermediates"),
        ("actor", "logits", logprob_logits_bytes(seqs, spec.vocab_size, e, False, tp), "next-token"),
    ])
    if whole is None:
        _fsdp_copy_out(prefill, "actor", st, first)
        _fsdp_copy_out(decode, "actor", st, False)
    return _with(loaded, [prefill, decode])


def forward(run: Run, r: RoleSetup, st: States, name: str, seqs: int, first: bool = True) -> list[Activity]:
    """A no-grad forward over ``seqs`` full sequences: log-probs (actor, reference) or scores (critic, reward),
    as two moments: inside the layers, and (for an LM head) the vocabulary-wide log-softmax after them.
    ``first``: the model's first forward in the step (FSDP2 at stage 2 unshards its layers there)."""
    role, spec, e, tp = r.role, r.spec, run.e, run.tp
    tokens, positions = _batch(run, seqs, training=False)
    lora_mlp = _lora_mlp(r, run)  # a LoRA-shared reference runs with adapters off (its ``lora`` is False)
    per_token = _forward_per_token(spec, e, tp, lora_mlp)
    if run.sp > 1 and run.sp_mode == "ring":  # OpenRLHF: the gathered K/V chunks may outgrow the MLP
        per_token = max(per_token, ring_forward_transient_per_token(spec, e, run.sp, run.ring_head_stride, tp))
    elif run.sp > 1:  # Ulysses: the all-to-all around attention may outgrow the MLP
        per_token = max(per_token, ulysses_forward_transient_per_token(spec, e, run.sp))
    layers = Activity(name, [
        (role, "parameter", _gathered(st, first), "gathered weights"),
        (role, "activation", int(tokens * per_token), ""),
    ])
    if r.quantized:
        layers.items.append((role, "temp", dequantized_weight_bytes(spec, e, tp), DEQUANT_NOTE))
    _fsdp_copy_out(layers, role, st, first)
    if not r.lm_head:
        return [layers]
    chunked, logits = run.logprob_kernel in ("chunked", "row-chunked"), _logprob_bytes(run, r, seqs, training=False)
    logprobs = Activity(f"{name}: " + SCORING_LOGPROB_NAMES.get(run.logprob_kernel, "log-softmax"), [
        (role, "parameter", st.fsdp.after_forward if st.fsdp else st.gather, "gathered weights"),
        (role, "logits", logits, "log-probs"),
    ])
    if role == "actor" and "scoring" in run.entropy:  # verl: the old log-probs' entropy, for metrics
        logprobs.add(role, "logits", entropy_beside_logprobs_bytes(
            positions, spec.vocab_size, _logits_bytes(run), training=False, kernel=run.entropy_kernel,
            logprob_kernel=run.logprob_kernel, logprob_bytes=logits, tp=tp),
                     f"entropy over the vocabulary ({run.entropy_kernel}), beyond the log-probs' peak")
    if st.fsdp is None:
        return [layers, logprobs]
    head = Activity(f"{name}: LM head", [  # FSDP2 keeps the root until the forward returns its logits
        (role, "parameter", st.fsdp.lm_head, "gathered weights"),
        (role, "logits", logits if chunked else int(positions * spec.vocab_size * e / tp), "logits"),
    ])
    return [layers, head, logprobs]


class TrainSetup(NamedTuple):
    """A training step's geometry: the model, its tokens per micro-batch, the bytes each token saves per layer,
    and ``moment(name, gather)``, which starts an activity of the step with its gathered weights (and the
    earlier micro-batches' gradients)."""

    spec: ModelSpec
    tokens: int
    per: LayerActivation
    moment: Callable[..., Activity]


def _train_setup(run: Run, r: RoleSetup, st: States) -> TrainSetup:
    spec, tokens = r.spec, _batch(run, run.train_seqs, training=True)[0]
    per = _saved_per_token(spec, run.e, run.train_seq_len, not r.lora, run.lora_rank if r.lora else 0,
                           run.lora_targets, _adapter_bytes(r, run.e), _eager(run), run.tp)
    if run.sp > 1 and run.sp_mode == "ulysses":  # repeated K/V heads, the all-to-all'd output (ring: nothing more)
        per = replace(per, base=per.base + ulysses_saved_bytes_per_token(spec, run.e, run.sp,
                                                                         weights_trainable=not r.lora))
    accumulates = run.rollout_seqs > run.train_seqs if run.accumulates is None else run.accumulates
    accumulating = accumulates and not st.gradient_persists

    def moment(name: str, gather: int | None = None) -> Activity:
        items = [(r.role, "parameter", st.gather if gather is None else gather, "gathered weights")]
        if r.quantized:
            items.append((r.role, "temp", dequantized_weight_bytes(spec, run.e, run.tp), DEQUANT_NOTE))
        if accumulating:
            items.append((r.role, "gradient", st.gradient, "earlier micro-batches' gradients"))
        return Activity(f"{r.role} {name}", items)

    return TrainSetup(spec, tokens, per, moment)


DEQUANT_NOTE = "bitsandbytes dequantizes one 4-bit weight for its matmul"
SCORING_LOGPROB_NAMES = {"chunked": "chunked LM head", "fp32-fused": "fp32 logits and cross-entropy",
                         "row-chunked": "row-chunked LM head"}
"""A scoring forward's log-prob moment, by ``logprob_kernel`` (else 'log-softmax')."""
TRAINING_LOGPROB_NOTES = {
    "log-softmax": "fp32 log-softmax and its backward",
    "fused": "fused cross-entropy: the logits, their gradient in place",
    "chunked": "chunked LM head's backward: a tile, the hidden states' and LM head's gradients in fp32 and 16-bit",
    "fp32-fused": "fused cross-entropy's backward: the fp32 logits it saved and their fp32 gradient",
    "row-chunked": "row-chunked LM head's backward: a recomputed tile and its gradient, the hidden states' gradient",
}


def _logprob_bytes(run: Run, r: RoleSetup, seqs: int, training: bool) -> int:
    """The log-prob path over ``seqs`` sequences' scored positions, by ``run.logprob_kernel``: log-softmax of the
    fp32 logits, a fused cross-entropy (of the 16-bit logits, or of their fp32 copy: OpenRLHF), or a chunked LM
    head (no logits; in training, the LM head's gradient accumulators when it trains)."""
    tokens, positions = _batch(run, seqs, training)
    vocab, e, tp = r.spec.vocab_size, run.e, run.tp
    if run.logprob_kernel == "row-chunked":
        return row_chunked_logprob_bytes(positions, seqs, vocab, r.spec.hidden_size, e,
                                         rows=row_chunk_rows(vocab, run.logprob_chunk_rows), training=training,
                                         head_trains=training and not r.lora, tp=tp)
    if run.logprob_kernel == "chunked":
        return chunked_logprob_bytes(positions, tokens, vocab, r.spec.hidden_size, e,
                                     training=training, head_trains=training and not r.lora, tp=tp)
    if run.logprob_kernel == "fused":
        return fused_logprob_bytes(positions, vocab, e, tp)
    if run.logprob_kernel == "fp32-fused":
        return fp32_fused_logprob_bytes(positions, vocab, e, training, tp)
    return logprob_logits_bytes(positions, vocab, e, training, tp)


def _batch(run: Run, seqs: int, training: bool) -> tuple[int, int]:
    """Tokens through the layers and positions through the LM head per GPU for a forward of ``seqs`` sequences:
    the run's packed (capped, sequence-parallel) micro batch (``tokens.micro_batch``) when it has one, else
    ``seqs`` padded to the longest sequence."""
    batch = run.train_batch if training else run.score_batch
    if batch is not None and seqs == (run.train_seqs if training else run.score_seqs):
        return batch.tokens, batch.positions
    return seqs * run.train_seq_len, seqs * run.logit_tokens


def _logits_bytes(run: Run) -> int:
    """Bytes per element of the logits the entropy reads: fp32 where the log-prob path casts them (OpenRLHF's
    ``Actor.forward``, 'fp32-fused'), else the run's dtype."""
    return 4 if run.logprob_kernel == "fp32-fused" else run.e


def _entropy_loss(run: Run, r: RoleSetup, act: Activity, positions: int, logprob_bytes: int) -> None:
    """The entropy in the update's loss (verl ``entropy_coeff`` ≠ 0, TRL ``entropy_coef`` ≠ 0) beside the log-prob
    path's ``logprob_bytes``: its backward's peak, or the log-prob path's backward with the entropy's gradient of
    the logits and, for verl's fused cross-entropy, its gradient written out of place (dp_actor.py:
    ``inplace_backward = False`` when ``calculate_entropy``), whichever is larger
    (``formulas.entropy_beside_logprobs_bytes``). Without grad (TRL's top_entropy_quantile mask) it is added."""
    vocab, tp = r.spec.vocab_size, run.tp
    if run.entropy == "update-no-grad":  # TRL's top_entropy_quantile mask: taken under no_grad
        act.add(r.role, "logits", entropy_bytes(positions, vocab, _logits_bytes(run), training=False,
                                                kernel=run.entropy_kernel, tp=tp),
                f"entropy over the vocabulary in the loss ({run.entropy_kernel}), without grad")
        return
    act.add(r.role, "logits", entropy_beside_logprobs_bytes(
        positions, vocab, _logits_bytes(run), training=True, kernel=run.entropy_kernel,
        logprob_kernel=run.logprob_kernel, logprob_bytes=logprob_bytes, tp=tp),
            f"entropy over the vocabulary in the loss ({run.entropy_kernel}): its backward, beyond the log-probs'")


def _checkpointed_inputs(run: Run, r: RoleSetup, tokens: int) -> int:
    """Each checkpointed layer's input (e·h per token). transformers makes the input embeddings' output
    require grad when checkpointing (``enable_input_require_grads``): with frozen embeddings (LoRA) and
    learned positions added to it (OPT, GPT-2), that output is one more e·h tensor kept to the end (traced).
    Gemma-4 adds its per-layer inputs and the keys and values its KV-shared layers read (``formulas``).
    A bitsandbytes-quantized base goes through peft's ``prepare_model_for_kbit_training`` (peft 0.22
    ``utils/other.py``: every bf16/fp16 parameter that is not ``Params4bit`` — embeddings, norms — cast to fp32),
    so the residual stream is fp32: the embedding's output is, each RMSNorm multiplies by its fp32 weight, and
    bitsandbytes' ``Linear4bit.forward`` casts its output back to its (fp32) input's dtype; each layer's input is
    4·h per token (the recomputed layer's own fp32 intermediates are not counted)."""
    hidden_bytes = 4 if r.quantized else run.e
    per_token = r.spec.num_layers * hidden_bytes * r.spec.hidden_size
    if r.lora and r.spec.model_type in ("opt", "gpt2"):
        per_token += run.e * r.spec.hidden_size
    if r.spec.layer_groups:
        rank = run.lora_rank if _lora_mlp(r, run) else 0  # 'all-linear' adapts per_layer_model_projection
        per_token += (per_layer_inputs_bytes_per_token(r.spec, run.e, weights_trainable=not r.lora, grad=True,
                                                       lora_rank=rank, lora_dtype_bytes=_adapter_bytes(r, run.e))
                      + shared_kv_bytes_per_token(r.spec, run.e, run.tp))
    return int(tokens * per_token)


def _loss(run: Run, r: RoleSetup, act: Activity, tokens: int) -> None:
    """The final norm's saved tensors and the log-softmax path, alive when backward starts at the loss."""
    dschat = hybrid(run)
    chunked = run.logprob_kernel in ("chunked", "row-chunked")  # the LM head never runs as a layer
    batch_tokens, positions = _batch(run, run.train_seqs, training=True)
    lm_head_input = not (r.lora or chunked) and (positions == batch_tokens or dschat)
    per_token = final_norm_bytes_per_token(r.spec, run.e, weights_trainable=not r.lora, lm_head_input=lm_head_input)
    act.add(r.role, "activation", int(tokens * per_token), "final norm")
    if r.lm_head and dschat:  # DeepSpeed-Chat / ReMax: log-softmax over every position's (fp32) logits
        logprob_loss(run, r, act)
    elif r.lm_head:
        logprob = _logprob_bytes(run, r, run.train_seqs, training=True)
        act.add(r.role, "logits", logprob, TRAINING_LOGPROB_NOTES[run.logprob_kernel])
        if r.role == "actor" and "update" in run.entropy:
            _entropy_loss(run, r, act, positions, logprob)
    else:  # a scalar head: backward starts with the final norm's (or the last layer's) gradients
        grads = max(norm_backward_transient_per_token(r.spec, run.e),
                    backward_transient_per_token(r.spec, run.e, run.tp, _lora_mlp(r, run)))
        act.add(r.role, "activation", int(tokens * grads), "backward's first gradients")


def _layer_grads(run: Run, spec: ModelSpec) -> float:
    """A decoder layer's backward transient per token: the MLP's gradients, or under ring attention the gathered
    K/V chunks and their gradient buffers when larger (``formulas.ring_backward_transient_per_token``)."""
    grads = backward_transient_per_token(spec, run.e, run.tp)
    if run.sp > 1 and run.sp_mode == "ring":
        grads = max(grads, ring_backward_transient_per_token(spec, run.e, run.sp, run.ring_head_stride, run.tp))
    return grads


def train(run: Run, r: RoleSetup, st: States, setup: TrainSetup | None = None) -> list[Activity]:
    """Forward + backward at its peak moment, and the optimizer step.

    Without checkpointing the backward peak is at the loss: every layer's saved tensors, the final norm's and
    the log-softmax path alive at once. With checkpointing the forward/backward returned here is the
    recomputation of one layer in backward (layer inputs + that layer's saved tensors); the other candidate,
    the loss with the layer inputs, is ``checkpointed_loss``.
    """
    spec, tokens, per, moment = setup or _train_setup(run, r, st)
    fb = moment("forward/backward", _fsdp_at(st, "backward" if run.gradient_checkpointing else "loss"))
    if run.gradient_checkpointing:
        layer = per.base + per.implementation + per.lora + per.attention_scores + per.largest_layer_excess
        fb.items += (
            (r.role, "activation", _checkpointed_inputs(run, r, tokens), "checkpointed layer inputs"),
            (r.role, "activation", int(tokens * layer), "one layer recomputed in backward"),
            (r.role, "activation", int(tokens * _layer_grads(run, spec)), "that layer's gradients"),
        )
    else:
        frozen_input = norm_input_bytes_per_token(spec, run.e) if r.lora else 0  # layer 0's input norm
        fb.add(r.role, "activation", int(tokens * (spec.num_layers * per.base - frozen_input)),
               f"{spec.num_layers} layers")
        fb.add(r.role, "activation", int(tokens * spec.num_layers * per.implementation),
               "kept by transformers' implementation")
        fb.add(r.role, "activation", int(tokens * spec.num_layers * per.lora), "LoRA adapters' inputs")
        fb.add(r.role, "activation", int(tokens * spec.num_layers * per.attention_scores), "eager attention scores")
        if spec.per_layer_input_size:
            fb.add(r.role, "activation", int(tokens * per_layer_inputs_bytes_per_token(
                spec, run.e, weights_trainable=not r.lora, grad=True, lora_rank=run.lora_rank if _lora_mlp(r, run)
                else 0, lora_dtype_bytes=_adapter_bytes(r, run.e))), "per-layer inputs (PLE)")
        _loss(run, r, fb, tokens)
    out = [fb]
    if r.lm_head and not r.lora and spec.tie_word_embeddings:
        end = moment("backward's end")
        end.add(r.role, "activation", tied_embedding_gradient_sum_bytes(spec, run.e, run.tp),
                "tied embedding: the LM head's and the input embedding's gradients and their sum")
        out.append(end)
    step = [] if st.gradient_persists else [(r.role, "gradient", st.gradient, "")]  # else: shared, kept
    step.append((r.role, "temp", st.step_temp, "optimizer step"))
    return [*out, Activity(f"{r.role} optimizer step", step)]


def checkpointed_loss(run: Run, r: RoleSetup, st: States, setup: TrainSetup | None = None) -> list[Activity]:
    """With gradient checkpointing: the moment backward starts at the loss (layer inputs, final norm, the
    log-softmax path) — larger than a layer's recomputation when the vocabulary is large."""
    if not run.gradient_checkpointing:
        return []
    spec, tokens, _per, moment = setup or _train_setup(run, r, st)
    act = moment("backward at the loss", _fsdp_at(st, "loss"))
    act.items.append((r.role, "activation", _checkpointed_inputs(run, r, tokens), "checkpointed layer inputs"))
    _loss(run, r, act, tokens)
    return [act]


def fsdp_backward(run: Run, r: RoleSetup, st: States, setup: TrainSetup | None = None) -> list[Activity]:
    """FSDP2's other moments of a training step (``engine='fsdp'``, stage 2 or 3; module docstring of
    ``parallel``): without checkpointing, backward's first layers (L − 1 layers' saved tensors, the loss's
    freed); backward's last layers (layer 1 with layer 0 prefetched: one layer's tensors, the sharded gradients
    of the L − 2 layers reduced before); and the root's reduce-scatter after every layer's. FSDP1 adds its
    layers' reduce-scatters (``fsdp1``), the first in backward (L − 1 layers' checkpointed inputs or saved
    tensors) and layer 1's (layer 0 prefetched, the sharded gradients of L − 2 layers)."""
    fs = st.fsdp
    if fs is None or r.lora:
        return []
    spec, tokens, per, moment = setup or _train_setup(run, r, st)
    layer = per.base + per.implementation + per.lora + per.attention_scores
    grads = _layer_grads(run, spec)
    out = []
    if not run.gradient_checkpointing:
        first = moment("backward's first layers", fs.backward)  # layer L − 2, layer L − 1's reduce-scatter out
        first.add(r.role, "activation", int(tokens * (spec.num_layers - 1) * layer), f"{spec.num_layers - 1} layers")
        first.add(r.role, "activation", int(tokens * grads), "a layer's gradients")
        out.append(first)
    last = moment("backward's last layers", fs.late_backward)
    last.add(r.role, "activation", int(tokens * layer), "one layer" + (" recomputed" if run.gradient_checkpointing
                                                                       else "'s saved tensors"))
    last.add(r.role, "activation", int(tokens * grads), "that layer's gradients")
    end = moment("root's reduce-scatter", fs.backward_end)
    reduced = [(last, max(spec.num_layers - 2, 0)), (end, spec.num_layers)]
    if fs.first_reduce_scatter:  # FSDP1: a layer's bf16 and fp32 gradients, padded copy and new shard
        n_layers, hidden = spec.num_layers, int(tokens * run.e * spec.hidden_size / run.tp)
        first_rs = moment("first layer's reduce-scatter", fs.first_reduce_scatter)
        first_rs.add(r.role, "activation", _checkpointed_inputs(run, r, tokens) * (n_layers - 1) // n_layers
                     if run.gradient_checkpointing else int(tokens * (n_layers - 1) * layer),
                     f"{n_layers - 1} layers' " + ("inputs" if run.gradient_checkpointing else "saved tensors"))
        last_rs = moment("layer 1's reduce-scatter", fs.last_reduce_scatter)  # layer 0 prefetched
        last_rs.add(r.role, "activation", _checkpointed_inputs(run, r, tokens) // n_layers
                    if run.gradient_checkpointing else int(tokens * layer), "layer 0's " + (
                        "input" if run.gradient_checkpointing else "saved tensors"))
        for act in (first_rs, last_rs):
            act.add(r.role, "activation", hidden, "the layer's input gradient")
        out += [first_rs, last_rs]
        reduced.append((last_rs, max(n_layers - 2, 0)))
    for act, layers in reduced:
        if not any(item[1] == "gradient" for item in act.items):  # else: earlier micro-batches' (whole)
            act.add(r.role, "gradient", int(st.gradient * layers * spec.layer_params / r.num_params),
                    f"sharded gradients of the {layers} layers reduced so far")
    return [*out, last, end]


def _fsdp1_lazy_init(recipe: dict[str, list[Activity]], states: dict[str, States]) -> None:
    """FSDP1's lazy init, at a trained model's first use in the run (``fsdp1``): one more moment before its first
    activity. The optimizer states do not exist yet then, and the resident ledger counts them: the moment's item
    is the part of the transient above them."""
    for role, st in states.items():
        extra = st.fsdp.lazy_init - st.optstate if st.fsdp is not None else 0
        if extra <= 0:
            continue
        for activities in recipe.values():
            at = next((i for i, act in enumerate(activities) if act.role == role), None)
            if at is not None:
                activities.insert(at, Activity(f"{role}: FSDP1 lazy init", [Item(
                    role, "parameter", extra, "the largest unit's fp32 unsharded buffer, allocated and freed once "
                    "(first forward of the run), less the optimizer states not yet made")]))
                break


def _fsdp_persisting_layers(run: Run, recipe: dict[str, list[Activity]], states: dict[str, States]) -> None:
    """FSDP2 at stage 2 (``reshard_after_forward=False``): a trained model's layers stay unsharded from its first
    forward in a step to its backward; add them to the other models' activities in between. FSDP1 (stage 2 and
    3) also gets its lazy-init moment here (``_fsdp1_lazy_init``)."""
    _fsdp1_lazy_init(recipe, states)
    for role, st in states.items():
        if st.fsdp is None or not st.fsdp.persists:
            continue
        gpus = run.gpus_of(role)  # split placement: the other roles on its GPUs only
        started = False
        kept = (Item(role, "parameter", st.fsdp.persists, ("FSDP2 reshard_after_forward=False" if st.fsdp.version
                     == 2 else "FSDP1 SHARD_GRAD_OP") + ": layers unsharded until its backward"),)
        for phase, activities in recipe.items():
            if phase == f"{role}_update":
                break
            for act in activities:
                own = act.role == role
                started = started or own
                if started and not own and (gpus is None or act.role in gpus):
                    act.shared += kept


def _loaded(r: RoleSetup, st: States, update: bool) -> list[Item]:
    """Idle offload: what the role brings back to the GPU for one of its own steps (an update, or a forward)."""
    items = []
    if r.sharding.idle_params and st.parameter:
        items.append((r.role, "parameter", st.parameter, "weight shards back from the CPU (idle offload)"))
    if update and r.sharding.idle_optimizer and st.optstate:
        items.append((r.role, "optstate", st.optstate, "optimizer states back from the CPU (idle offload)"))
    return items


def _with(loaded: list[Item], activities: list[Activity]) -> list[Activity]:
    """``activities``, each holding ``loaded`` first."""
    if loaded:
        for act in activities:
            act.items = [*loaded, *act.items]
    return activities


def _vllm_bytes(run: Run) -> int:
    return int(run.vllm_utilization * run.capacity_bytes)


VLLM_PROFILE_TOKENS = 8192
"""Tokens of vLLM's profile run, its ``max_num_batched_tokens``, unless ``vllm_max_num_batched_tokens`` says: verl's
``rollout.max_num_batched_tokens`` default, and vLLM's own default for the ``LLM`` class
(``EngineArgs._set_default_args``, GPUs under 70 GiB)."""
VLLM_BLOCK_TOKENS = 16
"""vLLM's KV cache block on CUDA (``CacheConfig.block_size``): a sequence holds whole blocks."""


class VllmPool(NamedTuple):
    """What a colocated vLLM engine's reservation holds on one GPU, as vLLM sizes it at start-up (v1
    ``gpu_worker.py::Worker.determine_available_memory``): the KV cache gets ``requested_memory`` (the GPU's
    total memory × ``gpu_memory_utilization``) less the non-KV memory its profile run measured — its weights,
    the peak activations of a ``max_num_batched_tokens`` forward, non-torch allocations."""

    reserved: int
    weights: int
    """Its weights per GPU: Ψ·e over ``vllm_tensor_parallel_size``."""
    activations: int
    """The profile run's peak: one layer's intermediates over ``VLLM_PROFILE_TOKENS`` tokens (the formula of HF's
    prefill, ``layer_forward_transient_per_token``). Its sampler pass, non-torch memory and CUDA graphs are not
    counted: ``kv_cache`` is an upper bound."""
    kv_cache: int
    """``reserved − weights − activations``: the KV cache pool (≤ 0: vLLM cannot start)."""
    per_sequence: int
    """One sequence of the run (prompt + answer, in whole blocks) on one GPU of the engine."""
    sequences: int
    """Sequences the pool holds at once (0 when it holds none)."""
    wanted: int
    """Sequences one engine generates at once: its GPUs' rollout prompts × group size."""


def vllm_pool(run: Run, actor: RoleSetup) -> VllmPool:
    """The KV cache left to colocated vLLM on one GPU. vLLM refuses to start when it is not positive ("No available
    memory for the cache blocks") or holds less than one ``max_model_len`` request (``kv_cache_utils.py::
    check_enough_kv_cache_memory``: "To serve at least one request with the model's max seq len ..."); verl sets
    ``max_model_len`` to prompt + response length. Fewer sequences than a generation call runs: vLLM preempts."""
    spec, e, vtp = actor.spec, run.e, run.vllm_tp
    reserved = _vllm_bytes(run)
    weights = -(-actor.num_params * e // vtp)
    activations = int(run.vllm_batched_tokens * _forward_per_token(spec, e, vtp, False))
    pool = reserved - weights - activations
    tokens = -(-(run.prompt_len + run.gen_len) // VLLM_BLOCK_TOKENS) * VLLM_BLOCK_TOKENS
    per_sequence = kv_cache_bytes(spec, tokens, 1, e, vtp)
    return VllmPool(reserved, weights, activations, pool, per_sequence, max(pool, 0) // per_sequence,
                    run.rollout_seqs * vtp)


def vllm_prefill_activation_bytes(run: Run, actor: RoleSetup) -> int:
    """The activations of vLLM's largest forward in a generation call: the prefill of its prompts, one scheduler
    step of at most ``max_num_batched_tokens`` tokens (chunked prefill), one layer's intermediates per token (the
    formula of the profile run, ``vllm_pool``). After the profile run vLLM empties torch's cache
    (``memory_profiling``, vllm 0.23 utils/mem_utils.py:191), so the device holds these, not the profile's."""
    tokens = min(run.rollout_seqs * run.vllm_tp * run.prompt_len, run.vllm_batched_tokens)
    return int(tokens * _forward_per_token(actor.spec, run.e, run.vllm_tp, False))


VLLM_INPUT_BUFFER_BYTES_PER_TOKEN = 4 + 8 + 8 + 1 + 8
"""vLLM's persistent input buffers per scheduled token (vllm 0.23 ``GPUModelRunner.__init__``,
v1/worker/gpu_model_runner.py:718-798): ``input_ids`` int32, ``positions`` int64, ``req_indices`` int64,
``is_token_ids`` bool, ``query_pos`` int64 — beside ``inputs_embeds``, e·h per token."""


def vllm_input_buffer_bytes(run: Run, actor: RoleSetup) -> int:
    """vLLM's persistent input buffers (the CUDA graphs' static inputs), ``max_num_batched_tokens`` long: allocated by
    torch after the worker's start-up snapshot and outside its CuMem pool, they are neither subtracted from its
    budget (``determine_available_memory`` counts weights, the profile's torch peak and non-torch memory) nor
    freed by sleep (``CuMemAllocator.sleep`` releases only what it allocated: weights and KV cache)."""
    return run.vllm_batched_tokens * (VLLM_INPUT_BUFFER_BYTES_PER_TOKEN + run.e * actor.spec.hidden_size)


def _vllm_resident(run: Run, recipe: dict[str, list[Activity]], actor: RoleSetup) -> None:
    """What colocated vLLM holds outside its budget for its whole life, awake or asleep
    (``vllm_input_buffer_bytes``)."""
    if run.rollout_engine == "vllm" and run.rollout_seqs:
        kept = (Item("actor", "buffer", vllm_input_buffer_bytes(run, actor),
                     "vLLM's persistent input buffers (outside its budget, kept asleep)"),)
        keep_alive(recipe, kept, run.gpus_of("actor"))


def _vllm_awake(run: Run, recipe: dict[str, list[Activity]]) -> None:
    """Colocated vLLM without sleep mode (TRL's default): its reservation stays through every phase."""
    if run.rollout_engine == "vllm" and not run.vllm_sleep and run.rollout_seqs:
        kept = (Item("actor", "other", _vllm_bytes(run), "vLLM's reservation, awake (no sleep mode)"),)
        keep_alive(recipe, kept, run.gpus_of("actor"))


def _persisting_gradients(run: Run, recipe: dict[str, list[Activity]], states: dict[str, States]) -> None:
    """Gradients kept between steps, shared by every activity (of the same role's GPUs under split placement)."""
    for role, st in states.items():
        if not (st.gradient_persists and st.gradient):
            continue
        kept = (Item(role, "gradient", int(st.gradient), "16-bit gradients, zeroed but kept between steps"),)
        keep_alive(recipe, kept, run.gpus_of(role))


def phases(run: Run, states: dict[str, States]) -> dict[str, list[Activity]]:
    """The recipe of ``run.algo``: phase → activities, in the order the frameworks run them."""
    roles = {r.role: r for r in run.roles}
    actor = roles["actor"]

    ref = roles.get("reference")
    one_module = ref is not None and ref.adapter_params > 0  # ref 'lora-adapter': one module, parked as one

    def loaded(role: str, update: bool) -> list[Item]:
        """Idle offload: what comes back for ``role``'s step — with a second adapter on the actor's base, the
        whole module (``Module.to`` moves base and both adapters together)."""
        items = _loaded(roles[role], states[role], update)
        if one_module and role in ("actor", "reference"):
            other = "reference" if role == "actor" else "actor"
            items += _loaded(roles[other], states[other], False)
        return items

    def score(role: str, seqs: int, what: str) -> list[Activity]:
        r = roles.get(role)
        if r is None:
            return []
        st = states[role]
        acts = forward(run, r, st, f"{role} {what}", seqs, first=role != "actor")
        return _with(loaded(role, False), acts) if run.idle_offload else acts

    def update(role: str) -> list[Activity]:
        r, st = roles[role], states[role]
        setup = _train_setup(run, r, st)  # the step's geometry, shared by its moments
        acts = train(run, r, st, setup) + checkpointed_loss(run, r, st, setup) + fsdp_backward(run, r, st, setup)
        return _with(loaded(role, True), acts) if run.idle_offload else acts

    scoring = run.score_seqs  # sequences per scoring forward
    recipe: dict[str, list[Activity]] = {}
    if run.algo in ("ppo", "grpo", "remax", "rloo"):
        rollout = generate(run, actor, states["actor"], "sampled rollout")
        if run.greedy_pass:
            rollout += generate(run, actor, states["actor"], "greedy rollout (ReMax baseline)", first=False)
        recipe["rollout"] = rollout
        dschat = run.rollout_engine == "hybrid-engine" and run.placement == "colocated"
        if dschat:
            recipe["scoring"] = dschat_experience(run, roles, states)
        else:
            recipe["scoring"] = (score("actor", scoring, "old log-probs") + score("reference", scoring, "log-probs")
                                 + score("reward", scoring, "scores") + score("critic", scoring, "values"))
        recipe["actor_update"] = update("actor")
        if "critic" in roles:
            recipe["critic_update"] = update("critic")
            if dschat:  # train_rlhf holds actor_prob through the actor's backward and step and the critic's update
                actor_logits_held(run, recipe, actor)
        if run.rollout_engine == "hybrid-engine":
            hybrid_engine_workspace(run, recipe, actor)
    elif run.algo == "dpo":
        if "reference" in roles:
            recipe["scoring"] = score("reference", scoring, "log-probs (chosen + rejected)")
        recipe["actor_update"] = update("actor")
    else:  # sft
        recipe["actor_update"] = update("actor")
    _vllm_awake(run, recipe)
    _vllm_resident(run, recipe, actor)
    _persisting_gradients(run, recipe, states)
    _fsdp_persisting_layers(run, recipe, states)
    return recipe
