"""Algorithms as recipes: which models are resident, and what each phase runs, in order.

Every recipe returns ``{phase: [activities]}``; an activity is one generation, forward or training step
with the transient bytes it adds on top of the resident models. Knobs and their memory effect:

* ``gradient_checkpointing`` — the training forward keeps each layer's input (e·h per token) and recomputes
  one layer at a time in backward, instead of keeping every layer's saved tensors.
* ``attention='eager'`` — adds the b·a·s² fp32 softmax and its bf16 copy per layer.
* ``rollout_engine`` — 'hf': KV cache grows to prompt + answer; 'hybrid-engine': DeepSpeed-Chat's engine
  first gathers the actor's full weights (ZeRO-3); 'vllm': reserves ``gpu_memory_utilization`` × the GPU
  for its own weights and KV cache during rollout, asleep (freed) in the other phases.
* ``group_size`` — completions per prompt: multiplies the rollout's KV cache and the experience buffer.
* ReMax's greedy pass runs after the sampled one: same peak, twice the experience buffer.
"""

from __future__ import annotations

from memplan.estimator.formulas import (
    kv_cache_bytes,
    layer_forward_transient_per_token,
    logprob_logits_bytes,
    saved_bytes_per_token,
)
from memplan.estimator.ledger import Activity
from memplan.estimator.parallel import States, frozen_states, trainable_states
from memplan.estimator.resolve import RoleSetup, Run

EXPERIENCE_BYTES_PER_TOKEN = 8 + 8 + 5 * 4
"""int64 token ids and attention mask, fp32 old and reference log-probs, values, rewards, advantages."""


def _largest_unit(r: RoleSetup) -> int:
    spec = r.spec
    return max(spec.layer_params, spec.embedding_params, spec.lm_head_params)


def _largest_param(r: RoleSetup) -> int:
    spec = r.spec
    matrices = [lin.count * lin.in_features * lin.out_features for lin in spec.linears]
    return max([spec.embedding_params, spec.lm_head_params, *matrices])


def role_states(r: RoleSetup, run: Run) -> States:
    """Resident and update-time model states of one role on one GPU."""
    if r.shares_weights_with:
        return States()
    largest_param, largest_unit = _largest_param(r), _largest_unit(r)
    if not r.trainable:
        return frozen_states(r.num_params, r.base_bytes_per_param, largest_param, largest_unit, run.e, r.sharding)
    if not r.lora:
        return trainable_states(r.num_params, largest_param, largest_unit, run.e, r.sharding)
    base = frozen_states(r.num_params, r.base_bytes_per_param, largest_param, largest_unit, run.e, r.sharding)
    adapter = trainable_states(r.trainable_params, run.lora_rank * r.spec.hidden_size, 0, run.e, r.sharding)
    return States(
        parameter=base.parameter + adapter.parameter, optstate=adapter.optstate, buffer=adapter.buffer,
        gradient=adapter.gradient, step_temp=adapter.step_temp, gather=base.gather + adapter.gather,
        full_gather=base.full_gather, host=base.host + adapter.host,
    )


def generate(run: Run, actor: RoleSetup, st: States, name: str) -> Activity:
    """One generation call: ``rollout_seqs`` sequences, prefill then decode to prompt + answer tokens."""
    act = Activity(name)
    if run.rollout_engine == "vllm":
        act.add("actor", "other", int(run.vllm_utilization * run.capacity_bytes),
                "vLLM reserves gpu_memory_utilization × GPU memory (its weights + KV cache)")
        return act
    spec, seqs, tokens = actor.spec, run.rollout_seqs, run.prompt_len + run.gen_len
    if run.rollout_engine == "hybrid-engine" and (st.gather or actor.sharding.offload_params):
        act.add("actor", "parameter", st.full_gather, "hybrid engine gathers the full actor for generation")
    else:
        act.add("actor", "parameter", st.gather, "ZeRO-3 layer gather")
    kv = kv_cache_bytes(spec, tokens, seqs, run.e, run.tp)
    act.add("actor", "kv_cache", kv, f"{seqs} seqs × {tokens} tokens")
    if run.rollout_engine == "hf":
        act.add("actor", "temp", kv // spec.num_layers, "DynamicCache copies one layer's K/V as it grows")
    prefill = seqs * run.prompt_len * layer_forward_transient_per_token(spec, run.e, run.tp)
    act.add("actor", "activation", int(prefill), "prefill")
    act.add("actor", "logits", logprob_logits_bytes(seqs, spec.vocab_size, run.e, False, run.tp), "next-token")
    return act


def forward(run: Run, r: RoleSetup, st: States, name: str, seqs: int) -> Activity:
    """A no-grad forward over ``seqs`` full sequences: log-probs (actor, reference) or scores (critic, reward)."""
    act = Activity(name)
    act.add(r.role, "parameter", st.gather, "gathered weights")
    tokens = seqs * run.train_seq_len
    act.add(r.role, "activation", int(tokens * layer_forward_transient_per_token(r.spec, run.e, run.tp)))
    if r.lm_head:
        act.add(r.role, "logits", logprob_logits_bytes(seqs * run.logit_tokens, r.spec.vocab_size, run.e,
                                                       False, run.tp), "log-probs")
    return act


def train(run: Run, r: RoleSetup, st: States) -> list[Activity]:
    """Forward + backward (saved activations, loss) and the optimizer step, as two moments."""
    spec, seqs = r.spec, run.train_seqs
    tokens = seqs * run.train_seq_len
    per = saved_bytes_per_token(
        spec, run.e, seq_len=run.train_seq_len, weights_trainable=not r.lora, lora_rank=run.lora_rank if r.lora
        else 0, lora_targets=run.lora_targets, eager_attention=run.eager_attention, tp=run.tp,
    )
    layer = per.base + per.lora + per.attention_scores
    fb = Activity(f"{r.role} forward/backward")
    fb.add(r.role, "parameter", st.gather, "gathered weights")
    if run.gradient_checkpointing:
        fb.add(r.role, "activation", int(tokens * spec.num_layers * run.e * spec.hidden_size),
               "checkpointed layer inputs")
        fb.add(r.role, "activation", int(tokens * layer), "one layer recomputed in backward")
    else:
        fb.add(r.role, "activation", int(tokens * spec.num_layers * per.base), f"{spec.num_layers} layers")
        fb.add(r.role, "activation", int(tokens * spec.num_layers * per.lora), "LoRA adapters' inputs")
        fb.add(r.role, "activation", int(tokens * spec.num_layers * per.attention_scores), "eager attention scores")
    if r.lm_head:
        fb.add(r.role, "logits", logprob_logits_bytes(seqs * run.logit_tokens, spec.vocab_size, run.e, True, run.tp),
               "fp32 log-softmax and its backward")
    step = Activity(f"{r.role} optimizer step")
    step.add(r.role, "gradient", st.gradient)
    step.add(r.role, "temp", st.step_temp, "optimizer step")
    return [fb, step]


def phases(run: Run, states: dict[str, States]) -> dict[str, list[Activity]]:
    """The recipe of ``run.algo``: phase → activities, in the order the frameworks run them."""
    roles = {r.role: r for r in run.roles}
    actor = roles["actor"]

    def score(role: str, seqs: int, what: str) -> list[Activity]:
        r = roles.get(role)
        return [forward(run, r, states[role], f"{role} {what}", seqs)] if r else []

    micro = run.train_seqs
    recipe: dict[str, list[Activity]] = {}
    if run.algo in ("ppo", "grpo", "remax", "rloo"):
        rollout = [generate(run, actor, states["actor"], "sampled rollout")]
        if run.greedy_pass:
            rollout.append(generate(run, actor, states["actor"], "greedy rollout (ReMax baseline)"))
        recipe["rollout"] = rollout
        recipe["scoring"] = (score("actor", micro, "old log-probs") + score("reference", micro, "log-probs")
                             + score("reward", micro, "scores") + score("critic", micro, "values"))
        recipe["actor_update"] = train(run, actor, states["actor"])
        if "critic" in roles:
            recipe["critic_update"] = train(run, roles["critic"], states["critic"])
    elif run.algo == "dpo":
        if "reference" in roles:
            recipe["scoring"] = score("reference", micro, "log-probs (chosen + rejected)")
        recipe["actor_update"] = train(run, actor, states["actor"])
    else:  # sft
        recipe["actor_update"] = train(run, actor, states["actor"])
    return recipe
