"""DeepSpeed-Chat's (and ReMax's) make-experience and DeepSpeed's hybrid engine: the memory that exists only
when ``rollout_engine='hybrid-engine'``.

Owns, for ``algorithms``' recipes:

* ``hybrid`` — whether a run generates on the hybrid engine (DeepSpeed-Chat's or ReMax's trainer on
  DeepSpeed 0.10.3 + transformers 4.31);
* ``generation_logits`` — transformers 4.31's LM head over every prompt position at prefill (and its fp32
  upcast), the hybrid engine's K/V being in its workspace;
* ``dschat_experience`` — ``generate_experience`` after generation: the four forwards' outputs kept together;
* ``logprob_loss`` — the training log-softmax over every position (and the logits ``train_rlhf`` keeps);
* ``actor_logits_held`` — PPO's actor logits (``actor_prob``) alive through the critic's update;
* ``hybrid_engine_workspace`` — the inference workspace (KV cache included) kept in every phase, and the
  fused weight copies a ZeRO-1/2 actor keeps beside ZeRO's buffer (``hybrid_engine_fused_weight_bytes``).

Each term's source (trainer line, DeepSpeed kernel, transformers module) is in the docstring of its formula
in ``formulas`` (``hybrid_engine_workspace_bytes``, ``past_key_values_bytes``, ``hf_logits_element_bytes``,
``dschat_gather_log_probs_bytes``, ``remax_experience_temporaries_bytes``, ``dschat_logprob_backward_bytes``).
"""

from __future__ import annotations

from memplan.estimator.formulas import (
    dschat_gather_log_probs_bytes,
    dschat_logprob_backward_bytes,
    eager_attention_forward_bytes,
    hybrid_engine_fused_weight_bytes,
    hf_logits_element_bytes,
    hybrid_engine_cache_bytes,
    hybrid_engine_non_tp_bytes,
    hybrid_engine_tp_gather_bytes,
    hybrid_engine_tp_layer_bytes,
    hybrid_engine_workspace_bytes,
    layer_forward_transient_per_token,
    lm_head_logits_bytes,
    logprob_logits_bytes,
    past_key_values_bytes,
    remax_experience_temporaries_bytes,
)
from memplan.estimator.ledger import Activity, Item, keep_alive
from memplan.estimator.parallel import States
from memplan.estimator.resolve import RoleSetup, Run


def hybrid(run: Run) -> bool:
    """A generating run on DeepSpeed's hybrid engine: DeepSpeed-Chat's or ReMax's trainer."""
    return run.rollout_engine == "hybrid-engine" and run.rollout_seqs > 0


def generation_logits(run: Run, actor: RoleSetup, prefill: Activity, decode: Activity) -> None:
    """The hybrid engine's generation beyond the gathered weights. DeepSpeed's kernels keep K/V and their
    intermediates in the workspace (pt_binding.cpp: ds_rms_qkv, ds_softmax_context, ds_rms_mlp_gemm write into
    it), counted in every phase by ``hybrid_engine_workspace``; transformers 4.31's LlamaForCausalLM runs the LM
    head over every prompt position and upcasts (modeling_llama.py:824-825): the 16-bit logits and their fp32
    copy at prefill, the next token's at the last decode step. With ``inference_tp_size`` the LM head (not split)
    runs over the tp × all-gathered sequences (``tp_generation``)."""
    spec, seqs, e, tp = actor.spec, run.rollout_seqs * run.inference_tp, run.e, run.tp
    c = hf_logits_element_bytes(spec, e)
    prefill.items.append(("actor", "logits", lm_head_logits_bytes(seqs, run.prompt_len, spec.vocab_size, e, tp)
                          + (lm_head_logits_bytes(seqs, run.prompt_len, spec.vocab_size, c, tp) if c != e else 0),
                          f"prefill logits over {run.prompt_len} prompt positions (transformers 4.31 upcasts to fp32)"))
    decode.items.append(("actor", "logits", logprob_logits_bytes(seqs, spec.vocab_size, e, False, tp), "next-token"))


def tp_generation(run: Run, actor: RoleSetup, name: str) -> list[Activity]:
    """One hybrid-engine generation under ZeRO-3 with ``inference_tp_size`` = tp > 1, as three moments
    (deepspeed 0.10.3 runtime/hybrid_engine.py ``DeepSpeedHybridEngine.generate``, the TP branch; the slicing as
    DeepSpeed 0.9.0 ran it, ``formulas.hybrid_engine_tp_layer_bytes``):

    * gather + slicing — the layers gathered ``tp_gather_partition_size`` at a time, each sliced into its
      container, each group released (``hybrid_engine_tp_gather_bytes``);
    * prefill and last decode step — every layer's slice, and the parameters outside the layers' linears
      gathered whole around ``_generate`` (``hybrid_engine_non_tp_bytes``); the input ids all-gathered over the
      group, so the LM head and the workspace see tp × the GPU's sequences (``generation_logits``,
      ``hybrid_engine_workspace``). ``release_memory`` frees the slices after the call.
    """
    spec, e, tp = actor.spec, run.e, run.inference_tp
    adapters = actor.trainable_params // spec.num_layers if actor.lora else 0
    fuse = 2 * e * max(lin.in_features * lin.out_features for lin in spec.linears) if actor.lora else 0
    groups = -(-spec.num_layers // run.tp_gather_partition)
    gather = Activity(f"{name}: gather + TP slicing", [(
        "actor", "parameter", hybrid_engine_tp_gather_bytes(spec, e, tp, run.tp_gather_partition, adapters, fuse),
        f"{run.tp_gather_partition} layers gathered at a time ({groups} groups) beside the 1/{tp} slices made so far"
        + (" (LoRA fused into each weight)" if fuse else ""))])
    slices = ("actor", "parameter", spec.num_layers * hybrid_engine_tp_layer_bytes(spec, e, tp),
              f"every layer's 1/{tp} slice (inference tensor parallelism)")
    non_tp = ("actor", "parameter", hybrid_engine_non_tp_bytes(spec, e),
              "embeddings, norms and LM head gathered whole around generate")
    prefill = Activity(f"{name}: prefill", [slices, non_tp])
    decode = Activity(f"{name}: last decode step", [slices, non_tp])
    generation_logits(run, actor, prefill, decode)
    return [gather, prefill, decode]


def dschat_experience(run: Run, roles: dict[str, RoleSetup], states: dict[str, States]) -> list[Activity]:
    """DeepSpeed-Chat's and ReMax's ``generate_experience`` after generation: the actor, reference, reward
    and critic forwards run one after another over the whole generation batch, and each output stays
    referenced until the function returns (dschat/rlhf/ppo_trainer.py; ReMax remax_trainer.py @2cdfe70).

    The actor (train mode, checkpointing off) and the reference return ``past_key_values`` and every
    position's logits (fp32 for Llama); the reward model and critic (``forward_value(use_cache=False)``) keep
    only [b, s] values. Then DeepSpeed-Chat gathers the log-probs; ReMax also takes the entropy and the full
    KL over the vocabulary. One moment per layer stack, LM head and post-processing.
    """
    seqs, s, e, tp = run.rollout_seqs, run.train_seq_len, run.e, run.tp
    kept: list[Item] = []  # outputs alive from their forward to the end

    def moment(r: RoleSetup, what: str) -> Activity:
        return Activity(f"make-experience: {r.role} {what}",
                        [(r.role, "parameter", states[r.role].gather, "gathered weights"), *kept])

    moments: list[Activity] = []
    for role in ("actor", "reference", "reward", "critic"):
        r = roles.get(role)
        if r is None:
            continue
        layers = moment(r, "forward")
        lora_mlp = r.lora and run.lora_targets == "all-linear" and role != "reference"
        layers.items += (
            (role, "activation", int(seqs * s * layer_forward_transient_per_token(r.spec, e, tp, lora_mlp)),
             "one layer's intermediates"),
            (role, "activation", eager_attention_forward_bytes(seqs, r.spec.num_heads, s, e, tp),
             "eager attention scores, fp32 softmax and its 16-bit copy (one layer)"),
        )
        moments.append(layers)
        if not r.lm_head:
            continue
        kv = (role, "kv_cache", past_key_values_bytes(r.spec, s, seqs, e, tp),
              f"{role}'s past_key_values (use_cache defaults to True), kept until generate_experience returns")
        layers.items.append(kv)
        c = hf_logits_element_bytes(r.spec, e)
        head = moment(r, "LM head")
        head.items.append(kv)
        if c != e:  # the 16-bit logits live only until their upcast
            head.items.append((role, "logits", lm_head_logits_bytes(seqs, s, r.spec.vocab_size, e, tp),
                               "16-bit logits"))
        logits = (role, "logits", lm_head_logits_bytes(seqs, s, r.spec.vocab_size, c, tp),
                  f"{role}'s logits over all {s} positions" + (" (fp32 upcast)" if c != e else ""))
        head.items.append(logits)
        moments.append(head)
        kept += (kv, logits)
    spec = roles["actor"].spec
    c = hf_logits_element_bytes(spec, e)
    if run.algo == "remax":
        last = ("actor", "logits", remax_experience_temporaries_bytes(seqs, s, spec.vocab_size, c, tp),
                "log-softmax, probs, reference log-softmax, their difference and product (entropy, full KL)")
    else:
        last = ("actor", "logits", dschat_gather_log_probs_bytes(seqs, s, spec.vocab_size, c, tp),
                "gather_log_probs: log-softmax over s − 1 positions" + (" + contiguous copy" if seqs > 1 else ""))
    return [*moments, Activity("make-experience: log-probs", [*kept, last])]


def logprob_loss(run: Run, r: RoleSetup, act: Activity) -> None:
    """The training loss's log-softmax over every position's (fp32) logits and its backward; DeepSpeed-Chat's
    ``train_rlhf`` also keeps the logits (ReMax's does not)."""
    kept = run.algo != "remax"
    act.items.append((r.role, "logits", dschat_logprob_backward_bytes(
        run.train_seqs, run.train_seq_len, r.spec.vocab_size, hf_logits_element_bytes(r.spec, run.e),
        logits_kept=kept, tp=run.tp),
        "log-softmax over all positions and its backward" + (" + the logits train_rlhf keeps" if kept else "")))


def actor_logits_held(run: Run, recipe: dict[str, list[Activity]], actor: RoleSetup) -> None:
    """``train_rlhf`` holds ``actor_prob`` (the actor's logits) through the actor's backward and step and the
    critic's update: every moment of them but the loss's, which counts them already (``logprob_loss``)."""
    logits = lm_head_logits_bytes(run.train_seqs, run.train_seq_len, actor.spec.vocab_size,
                                  hf_logits_element_bytes(actor.spec, run.e), run.tp)
    held = ("actor", "logits", logits, "actor's logits, still held by train_rlhf (actor_prob)")
    for act in recipe["actor_update"]:
        if not any(role == "actor" and category == "logits" for role, category, _n, _note in act.items):
            act.items.append(held)
    for act in recipe["critic_update"]:
        act.items.append(held)


def hybrid_engine_workspace(run: Run, recipe: dict[str, list[Activity]], actor: RoleSetup) -> None:
    """DeepSpeed's inference workspace in every activity (of the actor's GPUs under split placement), as
    shared items: allocated by the first generation, kept while ``release_inference_cache`` is off (its
    default). With ``inference_tp_size`` = tp the first layer's forward sizes it for the all-gathered batch
    (tp × the GPU's sequences) with ``mp_size`` = tp (ds_transformer.py: ``allocate_workspace(..., input.size()[0],
    ..., self.config.mp_size, ...)``): the KV cache per GPU is as large as at tp 1, the activations tp times."""
    tokens = run.prompt_len + run.gen_len  # DeepSpeed-Chat and ReMax: max_out_tokens = prompt + answer
    seqs, mp = run.rollout_seqs * run.inference_tp, max(run.tp, run.inference_tp)
    total = hybrid_engine_workspace_bytes(actor.spec, seqs, tokens, run.e, mp)
    cache = hybrid_engine_cache_bytes(actor.spec, seqs, tokens, run.e, mp)
    workspace = (
        ("actor", "kv_cache", cache, f"hybrid-engine workspace: KV cache, {seqs} seqs × {tokens} tokens "
         "(cudaMalloc, kept between generations)"),
        ("actor", "activation", total - cache, "hybrid-engine workspace: inference activations and attention scratch"),
    )
    if actor.sharding.zero_stage < 3 and not actor.lora:  # frozen (LoRA-adapted) weights: the old storage is freed
        workspace += (("actor", "parameter", hybrid_engine_fused_weight_bytes(actor.spec, run.e, run.tp),
                       "hybrid-engine fused q/k/v (and up/gate) copies beside ZeRO's 16-bit buffer"),)
    keep_alive(recipe, tuple(item for item in workspace if item[2] > 0), run.gpus_of("actor"))
