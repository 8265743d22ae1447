"""A verl run, read from its launch script: ``python3 -m verl.trainer.main_ppo key=value ...`` (Hydra overrides).

``read(text)`` collects the overrides (shell line continuations, ``VAR=value`` / ``export VAR=value``
assignments with ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``$(( … ))`` integer arithmetic; later values
win, as in Hydra); ``fields(overrides, gpu)`` maps them onto request fields, with verl 0.9's defaults
(``verl/trainer/config/_generated_ppo_trainer.yaml``) for what the script leaves out, and one note per
setting memplan reads differently or not at all. Explicit CLI flags and keyword arguments override it.

What is read (``A`` = ``actor_rollout_ref``):

    A.model.path                      model (an unknown '-Instruct'/'-Chat' name: its base, noted)
    algorithm.adv_estimator           gae → ppo; grpo, rloo, remax; other critic-free estimators as grpo
    A.actor.use_kl_loss, algorithm.use_kl_in_reward
                                      a reference (ref 'none' without either); with LoRA the actor with its
                                      adapter off (verl's ref_in_actor); verl keeps the reference's
                                      parameters on the CPU (CPUOffload for forward-only workers)
    reward_model.enable, .model.path  reward 'model' and its architecture, else 'rule'
    critic.model.path                 PPO's critic architecture
    A.actor.strategy                  fsdp → engine 'fsdp', fsdp_version 1 (FSDP1, FlatParameter per decoder
                                      layer); fsdp2 → fsdp_version 2 (fully_shard) (megatron is not modeled)
    A.actor.fsdp_config.*             reshard_after_forward → ZeRO stage 3 (else 2); fsdp_size = GPUs per
                                      node → hybrid_shard; offload_policy → offload 'optimizer+params';
                                      param_offload / optimizer_offload → idle_offload; dtype, model_dtype
    A.model.enable_gradient_checkpointing, A.model.lora_rank, A.model.target_modules
    A.model.use_remove_padding        packing (verl 0.9's default: True)
    A.actor.ppo_micro_batch_size_per_gpu
                                      micro_batch_size
    A.actor.use_dynamic_bsz, ppo_max_token_len_per_gpu
                                      max_tokens_per_gpu when packed (unpadded: the cap ÷ sequence length
                                      sequences, noted)
    A.rollout / A.ref log_prob_micro_batch_size_per_gpu, critic.forward_micro_batch_size_per_gpu
                                      score_micro_batch_size (the largest); with log_prob_use_dynamic_bsz, the
    A.rollout / A.ref log_prob_max_token_len_per_gpu, critic.forward_max_token_len_per_gpu
                                      score_max_tokens_per_gpu (the largest)
    A.actor.ulysses_sequence_parallel_size
                                      sequence_parallel
    A.actor.entropy_coeff, calculate_entropy, use_torch_compile, entropy_from_logits_with_chunking
                                      entropy: 'scoring' for a full fine-tune (the old log-probs' metrics),
                                      'update' when entropy_coeff ≠ 0; entropy_kernel
    data.train_batch_size ÷ GPUs      rollout_batch_size (prompts per GPU); A.rollout.n → group_size
    data.max_prompt_length, data.max_response_length
                                      prompt_len, gen_len
    A.rollout.name, .gpu_memory_utilization, .tensor_model_parallel_size
                                      rollout_engine 'vllm' (sglang reserves the same fraction), or 'hf';
                                      vllm_tensor_parallel_size (2); the engine's GPU workers are processes
                                      beside the FSDP worker (processes_per_gpu 2)
    A.rollout.max_num_batched_tokens  vllm_max_num_batched_tokens (vLLM's profile run, its input buffers)
    A.rollout.free_cache_engine       vllm_sleep_mode (true: the engine sleeps outside rollout)
    A.rollout.layered_summon          vllm_sleep_level 1 (its weights wait in host RAM; else level 2)
    A.rollout.checkpoint_engine.update_weights_bucket_megabytes
                                      weight_sync_bucket_mb (2048): the weights go to the engine through it
    (always)                          logprob_kernel 'fused': flash-attn's cross-entropy (logprobs_from_logits)
    trainer.nnodes, trainer.n_gpus_per_node
                                      gpus, with the GPU named by the caller
"""

from __future__ import annotations

import ast
import operator
import re
import shlex
from pathlib import Path
from typing import Any, NamedTuple

from memplan.errors import InputError
from memplan.frameworks.common import Settings, catalog_model, integer, launch_text, typed

FIELD = "verl"
A = "actor_rollout_ref"
ADV_ESTIMATORS = {"gae": "ppo", "grpo": "grpo", "rloo": "rloo", "remax": "remax"}
DEFAULTS: dict[str, Any] = {  # verl 0.9.1 _generated_ppo_trainer.yaml, what this module reads
    "data.train_batch_size": 1024, "data.max_prompt_length": 512, "data.max_response_length": 512,
    "algorithm.adv_estimator": "gae", "algorithm.use_kl_in_reward": False,
    f"{A}.actor.strategy": "fsdp", f"{A}.actor.use_kl_loss": False, f"{A}.actor.entropy_coeff": 0,
    f"{A}.actor.use_dynamic_bsz": False, f"{A}.actor.ppo_max_token_len_per_gpu": 16384,
    f"{A}.actor.ulysses_sequence_parallel_size": 1, f"{A}.model.use_remove_padding": True,
    f"{A}.actor.use_torch_compile": True, f"{A}.actor.entropy_from_logits_with_chunking": False,
    f"{A}.actor.calculate_entropy": False, "critic.ppo_max_token_len_per_gpu": 32768,
    f"{A}.actor.fsdp_config.param_offload": False, f"{A}.actor.fsdp_config.optimizer_offload": False,
    f"{A}.actor.fsdp_config.offload_policy": False, f"{A}.actor.fsdp_config.reshard_after_forward": True,
    f"{A}.actor.fsdp_config.fsdp_size": -1, f"{A}.actor.fsdp_config.model_dtype": "fp32",
    f"{A}.actor.fsdp_config.dtype": "bfloat16",
    f"{A}.model.enable_gradient_checkpointing": True, f"{A}.model.lora_rank": 0,
    f"{A}.model.target_modules": "all-linear", f"{A}.model.use_fused_kernels": False,
    f"{A}.rollout.name": None, f"{A}.rollout.n": 1, f"{A}.rollout.gpu_memory_utilization": 0.5,
    f"{A}.rollout.tensor_model_parallel_size": 2,
    f"{A}.rollout.checkpoint_engine.update_weights_bucket_megabytes": 2048,
    f"{A}.rollout.max_num_batched_tokens": 8192,
    f"{A}.rollout.free_cache_engine": True, f"{A}.rollout.layered_summon": False,
    "reward_model.enable": False, "trainer.nnodes": 1, "trainer.n_gpus_per_node": 8,
}
_OVERRIDE = re.compile(r"^\+{0,2}([A-Za-z_]\w*(?:\.\w+)+)=(.*)$", re.S)
_ASSIGN = re.compile(r"^([A-Za-z_]\w*)=(.*)$", re.S)
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")
_ARITH = re.compile(r"\$\(\((.+?)\)\)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Div: operator.floordiv, ast.Mod: operator.mod}


class VerlRun(NamedTuple):
    fields: dict[str, Any]
    """Request fields, ``gpus`` included when a GPU was named."""
    notes: list[str]
    """Settings read differently or not at all, one line each."""


def _arith(expr: str, env: dict[str, str]) -> int:
    """Shell ``$(( expr ))`` over integers: + - * / % and parentheses, bare names read from ``env``."""
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Name) and node.id in env:
            return int(env[node.id])
        raise ValueError(expr)
    try:
        return ev(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        raise InputError(FIELD, f"cannot evaluate $(( {expr.strip()} ))", expr) from None


def _expand(text: str, env: dict[str, str]) -> str:
    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in env:
            return env[name]
        return m.group(2) if m.group(2) is not None else m.group(0)
    text = _VAR.sub(var, text)
    return _ARITH.sub(lambda m: str(_arith(m.group(1), env)) if "$" not in m.group(1) else m.group(0), text)


def read(text: str) -> dict[str, Any]:
    """The Hydra overrides of a verl launch script (or of a plain ``key=value ...`` list), values typed."""
    env: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    for line in text.replace("\\\r\n", " ").replace("\\\n", " ").splitlines():
        line = _expand(line, env)
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InputError(FIELD, f"cannot split {line.strip()[:80]!r}: {exc}", line.strip()[:80]) from None
        assignment = words[1:] if words[:1] == ["export"] else words  # NAME=value, or export NAME=value
        if len(assignment) == 1 and (m := _ASSIGN.match(assignment[0])):
            env[m.group(1)] = m.group(2)
            continue
        for word in words:
            if m := _OVERRIDE.match(word):
                overrides[m.group(1)] = typed(m.group(2))
    if not overrides:
        raise InputError(FIELD, "no verl overrides (key.sub=value) found", text.strip()[:80])
    return overrides


def _per_gpu(value: Any, dynamic: bool, max_tokens: Any, seq: int, what: str, notes: list[str]) -> int | None:
    if dynamic:
        n = max(1, integer(max_tokens, f"{what} (max tokens per GPU)", FIELD) // seq)
        notes.append(f"{what}: use_dynamic_bsz packs up to {max_tokens} tokens per GPU: estimated as {n} "
                     f"sequences of {seq} tokens")
        return n
    return integer(value, what, FIELD) if value is not None else None


def fields(overrides: dict[str, Any], gpu: str | None = None) -> VerlRun:
    """Request fields for a verl run: ``overrides`` (from ``read``) on top of verl's defaults; ``gpu`` names the
    GPU kind (``'H100-80GB'``): the count is the script's ``trainer.nnodes × trainer.n_gpus_per_node``."""
    settings = Settings(overrides, DEFAULTS, FIELD)
    get, num, flag = settings.get, settings.num, settings.flag
    notes: list[str] = []
    out: dict[str, Any] = {}
    strategy = get(f"{A}.actor.strategy")
    if strategy not in ("fsdp", "fsdp2"):
        raise InputError(FIELD, f"actor strategy {strategy!r} is not modeled: memplan models verl's FSDP workers "
                         "(fsdp, fsdp2)", strategy)
    out["engine"] = "fsdp"
    out["fsdp_version"] = 1 if strategy == "fsdp" else 2

    nodes, per_node = num("trainer.nnodes"), num("trainer.n_gpus_per_node")
    world = nodes * per_node
    if gpu is not None:
        out["gpus"] = f"{nodes}x{per_node}x{gpu}" if nodes > 1 else f"{per_node}x{gpu}"

    out["model"] = catalog_model(get(f"{A}.model.path", None), f"{A}.model.path", FIELD, notes)
    adv = get("algorithm.adv_estimator")
    algo = ADV_ESTIMATORS.get(adv)
    if algo is None:
        algo = "grpo"
        notes.append(f"adv_estimator {adv!r}: no critic, memory as GRPO's")
    out["algo"] = algo
    if algo == "ppo" and isinstance(critic := get("critic.model.path", None), str) and critic != get(f"{A}.model.path"):
        out["critic_model"] = catalog_model(critic, "critic.model.path", FIELD, notes)
    if get("reward_model.enable"):
        out["reward"] = "model"
        if isinstance(rm := get("reward_model.model.path", None), str):
            out["reward_model"] = catalog_model(rm, "reward_model.model.path", FIELD, notes)
    else:
        out["reward"] = "rule"

    fsdp = f"{A}.actor.fsdp_config"
    out["zero_stage"] = 3 if get(f"{fsdp}.reshard_after_forward") else 2
    fsdp_size = num(f"{fsdp}.fsdp_size", -1)
    if 0 < fsdp_size < world:
        out["hybrid_shard"] = True
        if fsdp_size != per_node:
            notes.append(f"fsdp_size {fsdp_size}: estimated as sharding within a node ({per_node} GPUs)")
    if get(f"{fsdp}.offload_policy") and strategy == "fsdp":
        notes.append("fsdp_config.offload_policy is FSDP2's CPUOffloadPolicy: verl's FSDP1 workers ignore it")
    elif get(f"{fsdp}.offload_policy"):
        out["offload"] = "optimizer+params"
    idle = [name for name, key in (("params", "param_offload"), ("optimizer", "optimizer_offload"))
            if get(f"{fsdp}.{key}")]
    if idle and "offload" not in out:
        out["idle_offload"] = "+".join(idle)
    critic_fsdp = "critic.fsdp" if any(k.startswith("critic.fsdp.") for k in overrides) else "critic.model.fsdp_config"
    if algo == "ppo" and any(get(f"{critic_fsdp}.{k}", False) != get(f"{fsdp}.{k}") for k in
                             ("param_offload", "optimizer_offload")):
        notes.append("the critic's offloads differ from the actor's: both estimated with the actor's")
    dtype = get(f"{fsdp}.dtype")
    out["dtype"] = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}.get(dtype, "bf16")
    if get(f"{fsdp}.model_dtype") in ("bf16", "bfloat16"):
        out["master_weights"] = False

    out["gradient_checkpointing"] = bool(get(f"{A}.model.enable_gradient_checkpointing"))
    lora = num(f"{A}.model.lora_rank", 0)
    if lora:
        out["lora_rank"] = lora
        targets = get(f"{A}.model.target_modules")
        if targets != "all-linear":
            notes.append(f"LoRA target_modules {targets!r}: estimated as all-linear")
    uses_ref = get(f"{A}.actor.use_kl_loss") or get("algorithm.use_kl_in_reward")
    if not uses_ref:
        out["ref"] = "none"
    elif lora:
        out["ref"] = "lora-shared"
    else:
        out["ref"] = "separate"
        out["offload_ref"] = True  # verl's forward-only workers: CPUOffload(offload_params=True)

    prompt, response = num("data.max_prompt_length"), num("data.max_response_length")
    seq = prompt + response
    out["prompt_len"], out["gen_len"] = prompt, response
    dynamic = bool(get(f"{A}.actor.use_dynamic_bsz"))
    packed = bool(get(f"{A}.model.use_remove_padding"))  # unpad_input: one [1, total_nnz] row per micro batch
    out["packing"] = packed
    sp = num(f"{A}.actor.ulysses_sequence_parallel_size")
    if algo == "ppo" and packed and not get("critic.model.use_remove_padding", False):
        notes.append("critic.model.use_remove_padding False (verl's default): the critic estimated packed, as the "
                     "actor")
    if sp > 1:
        out["sequence_parallel"] = sp
        if algo == "ppo" and integer(get("critic.ulysses_sequence_parallel_size", 1),
                                     "critic.ulysses_sequence_parallel_size", FIELD) != sp:
            notes.append("the critic's ulysses_sequence_parallel_size differs from the actor's: estimated with the "
                         "actor's")
    if dynamic and packed:  # rearrange_micro_batches: micro batches of at most max_token_len × sp tokens
        out["max_tokens_per_gpu"] = num(f"{A}.actor.ppo_max_token_len_per_gpu")
        if out["max_tokens_per_gpu"] * sp < seq:  # seqlen_balancing.py::rearrange_micro_batches asserts it
            raise InputError(FIELD, f"{A}.actor.ppo_max_token_len_per_gpu {out['max_tokens_per_gpu']} × ulysses "
                             f"{sp} is under max_prompt_length + max_response_length ({seq}): verl asserts "
                             "'max_token_len must be greater than the sequence length'", out["max_tokens_per_gpu"])
        if algo == "ppo" and num("critic.ppo_max_token_len_per_gpu") > out["max_tokens_per_gpu"]:
            notes.append(f"critic.ppo_max_token_len_per_gpu {get('critic.ppo_max_token_len_per_gpu')}: the critic's "
                         "update estimated with the actor's token cap")
    micro = _per_gpu(get(f"{A}.actor.ppo_micro_batch_size_per_gpu", None), dynamic and not packed,
                     get(f"{A}.actor.ppo_max_token_len_per_gpu"), seq, "ppo micro batch", notes)
    if micro is None and dynamic and packed:
        micro = max(1, out["max_tokens_per_gpu"] * sp // seq)  # what a cap holds at full length (planner, timing)
    if micro is None and get(f"{A}.actor.ppo_micro_batch_size", None) is not None:
        micro = max(1, num(f"{A}.actor.ppo_micro_batch_size") // world)
    if micro is None:
        raise InputError(FIELD, f"{A}.actor.ppo_micro_batch_size_per_gpu is not set (verl needs it unless "
                         "use_dynamic_bsz): pass --micro-batch-size", None)
    out["micro_batch_size"] = micro
    scoring = {}  # verl's log-prob and value forwards, each with its own micro batch (or token cap)
    caps = {}
    for worker, size_key, tokens_key, on in (
        (f"{A}.rollout", "log_prob_micro_batch_size_per_gpu", "log_prob_max_token_len_per_gpu", True),
        (f"{A}.ref", "log_prob_micro_batch_size_per_gpu", "log_prob_max_token_len_per_gpu", bool(uses_ref)),
        ("critic", "forward_micro_batch_size_per_gpu", "forward_max_token_len_per_gpu", algo == "ppo"),
    ):
        size = get(f"{worker}.{size_key}", None)
        worker_dynamic = bool(get(f"{worker}.log_prob_use_dynamic_bsz", dynamic))
        if on and worker_dynamic and packed:
            default = get("critic.ppo_max_token_len_per_gpu") if worker == "critic" else get(
                f"{A}.actor.ppo_max_token_len_per_gpu")
            caps[worker] = integer(get(f"{worker}.{tokens_key}", default), f"{worker}.{tokens_key}", FIELD)
        elif on and (size is not None or worker_dynamic):
            tokens = get(f"{worker}.{tokens_key}", get(f"{A}.actor.ppo_max_token_len_per_gpu"))
            scoring[worker] = _per_gpu(size, worker_dynamic, tokens, seq, f"{worker} {size_key}", notes)
    if caps:
        out["score_max_tokens_per_gpu"] = max(caps.values())
        if len(set(caps.values())) > 1:
            notes.append("scoring token caps differ (" + ", ".join(f"{w.split('.')[-1]} {n}" for w, n in
                         caps.items()) + "): estimated at the largest")
    if scoring:
        out["score_micro_batch_size"] = max(scoring.values())
        if len(set(scoring.values())) > 1:
            notes.append("scoring micro batches differ (" + ", ".join(f"{w.split('.')[-1]} {n}" for w, n in
                         scoring.items()) + "): estimated at the largest")

    n, batch = num(f"{A}.rollout.n"), num("data.train_batch_size")
    prompts = -(-batch // world)
    if batch % world:
        notes.append(f"train_batch_size {get('data.train_batch_size')} over {world} GPUs: {prompts} prompts per GPU")
    out["rollout_batch_size"], out["group_size"] = prompts, n  # the estimator caps the scoring micro batch

    name = get(f"{A}.rollout.name")
    if name in ("vllm", "sglang"):
        out["rollout_engine"] = "vllm"
        out["vllm_gpu_memory_utilization"] = settings.number(f"{A}.rollout.gpu_memory_utilization", 0.0, 1.0)
        out["vllm_tensor_parallel_size"] = num(f"{A}.rollout.tensor_model_parallel_size")
        # async rollout (verl 0.9's only mode): the engine's GPU workers are processes of their own beside the
        # FSDP worker, sent the weights through a bucket over CUDA IPC (BucketedWeightSender)
        out["processes_per_gpu"] = 2
        out["weight_sync_bucket_mb"] = num(f"{A}.rollout.checkpoint_engine.update_weights_bucket_megabytes")
        # vLLM's profile run and persistent input buffers (verl passes it to vllm.LLM / its engine args)
        out["vllm_max_num_batched_tokens"] = num(f"{A}.rollout.max_num_batched_tokens")
        # free_cache_engine: the engine sleeps (weights and KV cache released) outside rollout
        out["vllm_sleep_mode"] = flag(f"{A}.rollout.free_cache_engine")
        # vllm_rollout.py (vLLMAsyncRollout.__init__): layered_summon sleeps at level 1 (weights kept in host RAM),
        # else VLLM_SLEEP_LEVEL, 2 from vLLM 0.8.5 (verl/third_party/vllm/__init__.py)
        if flag(f"{A}.rollout.layered_summon"):
            out["vllm_sleep_level"] = 1
        if name == "sglang":
            notes.append("rollout sglang: its gpu_memory_utilization reservation counted as vLLM's")
    elif name == "hf":
        out["rollout_engine"] = "hf"
    else:
        raise InputError(FIELD, f"{A}.rollout.name is {name!r}: set vllm, sglang or hf", name)

    out["logprob_kernel"] = "fused"  # logprobs_from_logits: flash-attn's cross-entropy, in-place backward
    # dp_actor.py: the actor's old log-probs take the entropy for metrics unless LoRA (fsdp_workers.py
    # compute_log_prob: calculate_entropy = not is_lora); the update when entropy_coeff ≠ 0 or calculate_entropy
    where = ["scoring"] if not lora else []
    if get(f"{A}.actor.entropy_coeff") not in (0, 0.0, None, False) or get(f"{A}.actor.calculate_entropy"):
        where.append("update")
    out["entropy"] = "+".join(where) or "none"
    if get(f"{A}.actor.entropy_from_logits_with_chunking"):
        out["entropy_kernel"] = "fp32-chunked"
    else:
        out["entropy_kernel"] = "compiled" if get(f"{A}.actor.use_torch_compile") else "eager"
    if get(f"{A}.model.use_fused_kernels"):
        notes.append("use_fused_kernels: verl's fused log-prob kernel avoids full logits; they are counted "
                     "(an upper bound)")
    return VerlRun(out, notes)


def load(source: str | Path, gpu: str | None = None) -> VerlRun:
    """``fields(read(...))`` of a launch script's path (or its text, when it holds an override)."""
    text = launch_text(source, "=", FIELD)
    return fields(read(text), gpu)
