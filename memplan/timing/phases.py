"""Each phase of a step as a recipe: which model runs what, on how many sequences per GPU, and what it waits on.

A step is one generation batch per GPU (``rollout_batch_size`` prompts × ``group_size``), scored and trained on
once (one PPO epoch); DPO and SFT steps are one micro batch per GPU. Within a block (one model's forward calls,
one training pass) compute and the collectives that prefetch or reduce behind it overlap, so the block takes
its longest term; blocks follow one another. Per GPU: every data-parallel rank runs the same blocks at once.

* rollout — prefill (FLOPs) then ``gen_len`` decode steps, each reading the weights and the KV cache at the mean
  context once (HBM), or launch-bound without CUDA graphs (HF ``generate``, the hybrid engine: ``launches.py``
  counts each one's kernels per layer; under ZeRO-3 the hybrid engine also copies its split q, k, v and up/gate
  weights into merged buffers every token: ``launches.hybrid_engine_merge_bytes``); vLLM's KV reads and
  FLOPs follow ``gen_len_mean`` (``workload.decode_lengths``); ReMax's greedy
  pass again; the weight sync into the engine (vLLM: a copy of the weights, gathered first under ZeRO-3; the
  hybrid engine: its train↔inference switch, one gather under ZeRO-3; HF under ZeRO-3: a gather per token). The
  hybrid engine's ``inference_tp_size``: 1/tp of the layers read per token, the LM head over the group's
  sequences, two all-reduces per layer, the gathered layers sliced once per call (``hybrid_tp``).
* scoring — a forward of each frozen or old-policy model over the batch, ``score_micro_batch_size`` (or a token
  cap's worth) at a time; ZeRO-3 gathers the weights per call, over PCIe first when they live on the CPU. The
  tokens of every forward and training pass are ``workload``'s: padded, or packed at the mean length; Ulysses'
  all-to-alls, or ring attention's K/V all-gathers, are added where they run (``_sp_seconds``).
* actor_update / critic_update — forward + backward (+ recomputed forward) per micro batch, overlapped with
  ZeRO's gathers and reduce-scatters; then the optimizer step: memory-bound on the GPU, or the gradients down
  and the weights up over PCIe and the step on the CPU when offloaded, then ZeRO-1/2's all-gather.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from memplan.estimator.formulas import hybrid_engine_tp_layer_bytes
from memplan.estimator.resolve import RoleSetup, Run
from memplan.estimator.tokens import ulysses_kv_heads
from memplan.report import EstimateRequest
from memplan.timing import formulas as f
from memplan.timing import workload
from memplan.timing.hardware import GPUPerf
from memplan.timing.launches import decode_launch_seconds, hybrid_engine_merge_bytes
from memplan.timing.workload import Passes, Work, decode_lengths


class Block(NamedTuple):
    phase: str
    role: str
    what: str
    seconds: float
    bound: str


def _longest(terms: dict[str, float]) -> tuple[float, str]:
    bound = max(terms, key=terms.__getitem__)
    return terms[bound], bound


def _link(run: Run) -> str:
    return "network" if run.num_gpus > run.gpus_per_node else "nvlink"


def _gpus_of(run: Run, role: str) -> int:
    """GPUs that hold ``role``: all of them when colocated, its group's under split placement."""
    return run.num_gpus // len(run.groups) if run.groups else run.num_gpus


def _gather_seconds(run: Run, perf: GPUPerf, role: RoleSetup) -> tuple[float, float]:
    """One whole-model ZeRO-3 / FSDP gather for a forward or backward: (bus seconds, PCIe seconds when the
    shards live on the CPU). (0, 0) when the weights are whole on every GPU."""
    sh = role.sharding
    if sh.zero_stage < 3 or sh.dp <= 1:
        pcie = f.pcie_seconds(role.num_params * run.e / sh.tp, perf) if sh.offload_params else 0.0
        return 0.0, pcie
    total = role.num_params * run.e / sh.tp
    bus = f.bus_seconds(f.shard_collective_bytes(total, sh.dp), perf, run.num_gpus > run.gpus_per_node)
    pcie = f.pcie_seconds(total / sh.dp, perf) if sh.offload_params else 0.0
    return bus, pcie


def _tp_seconds(run: Run, perf: GPUPerf, tp: int, tokens: float, hidden: int, all_reduces: float) -> float:
    """Tensor parallelism's activation all-reduces (Megatron-LM, Shoeybi et al. 2019, arXiv 1909.08053 §3: two
    per layer in a forward, two in a backward), each of ``tokens`` × h elements, inside one node over NVLink;
    latency of small messages not counted."""
    if tp <= 1:
        return 0.0
    per = 2 * f.shard_collective_bytes(tokens * hidden * run.e, tp)  # all-reduce: reduce-scatter + all-gather
    return all_reduces * f.bus_seconds(per, perf, multi_node=False)


class HybridTP(NamedTuple):
    """What ``inference_tp_size`` = tp > 1 changes in a hybrid-engine generation, per GPU."""

    weight_bytes: float
    """Weights one decode step reads: every layer's 1/tp slice and the whole LM head."""
    head_flops_per_token: float
    """The LM head's FLOPs per sequence-token beyond the GPU's own sequences: (tp − 1)·2·V·h."""
    slice_copy_bytes: float
    """HBM traffic of slicing the gathered layers into the containers, per generate call (read + write)."""


def hybrid_tp(run: Run, actor: RoleSetup) -> HybridTP | None:
    """The hybrid engine's inference tensor parallelism (deepspeed 0.10.3 runtime/hybrid_engine.py ``generate``,
    slicing as in 0.9.0: ``formulas.hybrid_engine_tp_layer_bytes``): each GPU runs the tp × all-gathered
    sequences through 1/tp of every layer — the layers' FLOPs and KV reads per GPU are those of its own
    sequences, the weights read per token 1/tp — but through the whole LM head (an ``_other_layers``
    ``LinearLayer``, not split); before it, each layer's slices are copied out of the gathered weights. None
    without it."""
    tp = run.inference_tp
    if run.rollout_engine != "hybrid-engine" or tp <= 1:
        return None
    spec = actor.spec
    head = spec.vocab_size * spec.hidden_size
    slices = spec.num_layers * hybrid_engine_tp_layer_bytes(spec, run.e, tp)
    return HybridTP(weight_bytes=slices + head * run.e, head_flops_per_token=(tp - 1) * 2.0 * head,
                    slice_copy_bytes=2.0 * slices)


def rollout(run: Run, perf: GPUPerf, dtype: str, request: EstimateRequest) -> Iterator[Block]:
    actor = run.roles[0]
    spec, b = actor.spec, run.rollout_seqs
    engine = run.rollout_engine
    if engine == "remote":
        weights = actor.num_params * run.e
        yield Block("rollout", "actor", "send the weights to the remote engine (generation runs on other GPUs)",
                    weights / (perf.internode_bytes_per_s * f.BUS_EFFICIENCY), "network")
        return
    gen_tp = run.vllm_tp if engine == "vllm" else max(run.tp, run.inference_tp)
    weight_bytes = actor.num_params * actor.base_bytes_per_param / gen_tp
    htp = hybrid_tp(run, actor)
    if htp is not None:
        weight_bytes = htp.weight_bytes
    passes = (("sampled", b), ("greedy", b)) if run.greedy_pass else (("sampled", b),)  # ReMax: one per prompt
    zero3 = actor.sharding.zero_stage == 3 and actor.sharding.dp > 1
    gather_bus, _ = _gather_seconds(run, perf, actor)
    if engine == "vllm":
        # the actor's weights into vLLM's: gathered under ZeRO-3 / FSDP, then one device copy (read + write)
        copy = 2 * actor.num_params * run.e / gen_tp / (perf.hbm_bytes_per_s * f.GPU_STREAM_EFFICIENCY)
        seconds, bound = _longest({_link(run): gather_bus, "hbm": copy})
        yield Block("rollout", "actor", "weight sync into vLLM" + (" (gathered)" if zero3 else ""), seconds, bound)
    elif engine == "hybrid-engine":
        # DeepSpeed-Chat's HybridEngine.eval(): its inference containers take the training weights (LoRA fused
        # in): at most one pass over the weights
        copy = 2 * actor.num_params * run.e / (perf.hbm_bytes_per_s * f.GPU_STREAM_EFFICIENCY)
        yield Block("rollout", "actor", "hybrid-engine switch to inference", copy, "hbm")
    # the hybrid engine under ZeRO-3 gathers the whole actor at the start of every generate call (and frees it
    # at the end); so does HF generation with gather_for_generation (TRL's ds3_gather_for_generation)
    gathers_per_call = zero3 and (engine == "hybrid-engine" or (engine == "hf" and run.gather_for_generation))
    # without CUDA graphs a decode step cannot beat launching its layers' kernels (launches.py: HF's eager
    # count, or DeepSpeed's fused inference ops for the hybrid engine)
    launch = decode_launch_seconds(engine, spec.model_type, spec.num_layers,
                                   zero3=actor.sharding.zero_stage == 3, tp=gen_tp)
    # the hybrid engine under ZeRO-3 copies q, k, v (and Llama's up, gate) into merged buffers every forward, i.e.
    # every decode token: more HBM traffic per step (launches.hybrid_engine_merge_bytes)
    merge = hybrid_engine_merge_bytes(spec, run.e, actor.sharding.zero_stage == 3, gen_tp) if (
        engine == "hybrid-engine") else 0
    merged = f" (+ ZeRO-3 weight merges, {merge / 1e9:.2f} GB a token)" if merge else ""
    # A tensor-parallel group shares its replica's sequences (``tp``); a vLLM engine over ``vllm_tp`` GPUs takes
    # the sequences of all of them: per GPU, its 1/gen_tp of the weights and its own sequences' KV and FLOPs.
    kv_token = f.kv_bytes_per_token(spec, run.e) / run.tp
    mean, lengths = decode_lengths(run, request)
    live = mean / run.gen_len  # vLLM: the share of the batch's sequences still generating, over its gen_len steps
    for label, seqs in passes:
        if gathers_per_call and htp is not None:  # the same all-gathers, group by group, then the slices copied
            copy = htp.slice_copy_bytes / (perf.hbm_bytes_per_s * f.GPU_STREAM_EFFICIENCY)
            yield Block("rollout", "actor", f"{label}: gather the actor {run.tp_gather_partition} layers at a time, "
                        f"slice 1/{gen_tp} of each into the inference containers", gather_bus + copy,
                        _link(run) if gather_bus >= copy else "hbm")
        elif gathers_per_call:
            yield Block("rollout", "actor", f"{label}: gather the sharded actor whole to generate", gather_bus,
                        _link(run))
        prefill = f.forward_flops(spec, True, run.prompt_len, seqs)
        if htp is not None:
            prefill += htp.head_flops_per_token * run.prompt_len * seqs
        prefill_s = f.compute_seconds(prefill, perf, dtype, run.tp)
        prefill_tp = _tp_seconds(run, perf, gen_tp, seqs * run.prompt_len * gen_tp // max(1, run.tp), spec.hidden_size,
                                 2 * spec.num_layers)
        shared = f" (× {gen_tp}: the TP group's, 1/{gen_tp} of the heads each)" if htp is not None else ""
        yield Block("rollout", "actor", f"{label}: prefill {run.prompt_len} tokens × {seqs} sequences{shared}",
                    prefill_s + prefill_tp, "compute" if prefill_s >= prefill_tp else "nvlink")
        context = run.prompt_len + mean / 2  # the KV cache each decode step reads, on average
        step_flops = seqs * live * (2 * f.matmul_params(spec, True) + 4 * f.attention_width(spec) * context) / run.tp
        if htp is not None:
            step_flops += htp.head_flops_per_token * seqs * live
        step, bound = f.decode_step_seconds(weight_bytes + merge, seqs * live * context * kv_token, step_flops, perf,
                                            dtype, launch)
        if engine == "hf" and zero3 and not run.gather_for_generation:
            # DeepSpeed / FSDP gather every layer again for every token
            gather = gather_bus
            if gather > step:
                step, bound = gather, _link(run)
        step += _tp_seconds(run, perf, gen_tp, seqs * gen_tp // max(1, run.tp) * live, spec.hidden_size,
                            2 * spec.num_layers)
        yield Block("rollout", "actor", f"{label}: decode {run.gen_len} tokens × {seqs} sequences{shared}{merged}; "
                    f"{lengths}",
                    step * run.gen_len, bound)


def _ulysses_seconds(run: Run, perf: GPUPerf, role: RoleSetup, p: Passes, forwards: int) -> float:
    """Ulysses' all-to-alls (``formulas.ulysses_all_to_all_bytes``) in ``forwards`` forward-sized passes over the
    GPU's tokens, every layer. Not overlapped: each is awaited before attention or the next layer runs
    (``ulysses.py::all_to_all_tensor`` with ``async_op=False``). verl's device mesh is (dp, sp) with sp inner
    (``fsdp_workers.py``: ``init_device_mesh(..., mesh_dim_names=["dp", "sp"])``): a group within a node talks
    over NVLink, a larger one over the network. Not counted: the per-layer all-gather of position ids, the
    log-probs' gather (a few bytes per token)."""
    if run.sp <= 1:
        return 0.0
    spec = role.spec
    per_layer = f.ulysses_all_to_all_bytes(spec, p.tokens, run.sp, ulysses_kv_heads(spec.num_kv_heads, run.sp), run.e)
    return f.bus_seconds(forwards * spec.num_layers * per_layer, perf, run.sp > run.gpus_per_node)


def _ring_layer_seconds(run: Run, perf: GPUPerf, dtype: str, role: RoleSetup, p: Passes) -> tuple[float, float]:
    """OpenRLHF's ring attention (``sp_mode`` 'ring'): the seconds its K/V collectives add to one layer's forward
    and to its backward over the GPU's tokens, beyond the attention they overlap with. ring-flash-attention
    ``llama3_flash_attn_varlen.py`` splits the k KV heads per GPU into n = k / s chunks of s = ``heads_k_stride``;
    each chunk's all-gather (g seconds: ``formulas.ring_all_gather_bytes`` for s heads) is issued with
    ``async_op=True`` (``utils.py::AllGatherComm``) before the previous chunk's attention (c seconds, its share
    of the layer's attention FLOPs: 4·(a/n)·d·span per token forward, twice that backward) and awaited after it.
    Forward: g, then n chunks each ``max(c, g)`` but the last c: g + (n − 1)·max(0, g − c) beyond the n·c of
    compute counted already. Backward adds each chunk's ``reduce_scatter_tensor`` of the K/V gradient (r = g's
    bytes, synchronous: queued on the same NCCL stream behind the next gather, and awaited before the next chunk):
    g + n·r + (n − 1)·max(0, g − 2c). s = k (``ring_attn_head_stride`` = heads) gathers once: nothing overlaps.
    OpenRLHF's ring groups are consecutive ranks (``utils/deepspeed/deepspeed.py::setup_ring_attn``): NVLink
    within a node, the network when sp > GPUs per node. Not counted: the collectives' slowing of the attention
    kernels they run beside, the ``send_k``/``send_v`` copies, the log-probs' all-gather."""
    spec, tp = role.spec, role.sharding.tp
    kv = max(spec.num_kv_heads // tp, 1)
    stride = min(run.ring_head_stride, kv)
    chunks = kv // stride
    gather = f.bus_seconds(f.ring_all_gather_bytes(spec, p.tokens, run.sp, stride, run.e), perf,
                           run.sp > run.gpus_per_node)
    attention = f.compute_seconds(4.0 * spec.num_heads * spec.head_dim * p.seq_len * p.tokens / chunks, perf, dtype,
                                  tp)
    forward = gather + (chunks - 1) * max(0.0, gather - attention)
    backward = gather + chunks * gather + (chunks - 1) * max(0.0, gather - 2 * attention)
    return forward, backward


def _sp_seconds(run: Run, perf: GPUPerf, dtype: str, role: RoleSetup, p: Passes, training: bool) -> float:
    """Sequence parallelism's collectives in a no-grad forward (``training`` False) or a training pass (forward,
    recomputed forward under checkpointing, backward), every layer: ring attention's K/V all-gathers
    (``_ring_layer_seconds``) or Ulysses' all-to-alls (``_ulysses_seconds``)."""
    if run.sp <= 1:
        return 0.0
    if run.sp_mode == "ring":
        forward, backward = _ring_layer_seconds(run, perf, dtype, role, p)
        forwards = 1 + run.gradient_checkpointing if training else 1
        return role.spec.num_layers * (forwards * forward + (backward if training else 0.0))
    return _ulysses_seconds(run, perf, role, p, 2 + run.gradient_checkpointing if training else 1)


def _forward_calls(run: Run, perf: GPUPerf, dtype: str, role: RoleSetup, p: Passes, label: str) -> Block:
    """A no-grad forward of ``role`` over the passes' tokens, in ``p.calls`` calls."""
    n = p.calls
    compute = f.compute_seconds(f.token_forward_flops(role.spec, role.lm_head, p.tokens, p.seq_len), perf, dtype,
                                role.sharding.tp)
    bus, pcie = _gather_seconds(run, perf, role)
    terms = {"compute": compute, _link(run): n * bus, "pcie": n * pcie}
    seconds, bound = _longest(terms)
    seconds += _tp_seconds(run, perf, role.sharding.tp, p.tokens, role.spec.hidden_size, 2 * role.spec.num_layers)
    seconds += _sp_seconds(run, perf, dtype, role, p, training=False)
    where = " (weights from the CPU)" if role.sharding.offload_params else ""
    return Block("scoring", role.role, f"{label}: forward × {p.seqs} sequences in {n} call(s){where}; {p.basis}",
                 seconds, bound)


def scoring(run: Run, perf: GPUPerf, dtype: str, request: EstimateRequest, work: Work) -> Iterator[Block]:
    if run.algo == "sft":
        return
    scored = work.scored
    if run.algo == "dpo":
        for role in run.roles:
            if role.role == "reference":
                yield _forward_calls(run, perf, dtype, role, scored, "reference")
        return
    b = run.rollout_seqs
    for role in run.roles:
        if role.role == "actor":
            # ReMax too: remax_trainer.py ``generate_experience`` runs ``self.actor_model(seq, ...)`` under no_grad
            # for the log-probs, entropy and KL of the sampled sequences (liziniu/ReMax @536ba49)
            yield _forward_calls(run, perf, dtype, role, scored, "actor old log-probs")
        elif role.role == "critic":
            yield _forward_calls(run, perf, dtype, role, scored, "critic values")
        elif role.role == "reference":
            yield _forward_calls(run, perf, dtype, role, scored, "reference log-probs")
        elif role.role == "reward":
            seqs = 2 * b if run.greedy_pass else b  # ReMax scores the greedy baseline too
            yield _forward_calls(run, perf, dtype, role,
                                 scored if seqs == b else workload.passes(run, request, seqs, scoring=True),
                                 "reward (sampled + greedy)" if run.greedy_pass else "reward")


def optimizer_steps(run: Run, micro_batches: int) -> int:
    """Optimizer steps per generation batch. DeepSpeed-Chat's PPO (the hybrid engine's algorithm) steps the actor
    and the critic after every training micro batch: its step-3 ``main.py`` calls ``trainer.train_rlhf(exp_data)``
    per micro batch of ``per_device_training_batch_size``, and ``DeepSpeedPPOTrainer.train_rlhf``
    (dschat/rlhf/ppo_trainer.py) runs ``actor_model.step()`` and ``critic_model.step()`` each time. ReMax's fork
    accumulates instead (liziniu/ReMax step3 ``main.py``: ``backward(actor_loss / len(exp_dataset))`` per micro
    batch, one ``actor_model.step()`` per generation batch), as do the other frameworks: one step. DeepSpeed's
    ``engine.step()`` updates only at its ``gradient_accumulation_steps`` boundary: taken as 1 (the ReMax
    scripts' value; DeepSpeed-Chat's single-GPU OPT scripts set 2 and 16, where this overcounts the steps)."""
    if run.algo == "ppo" and run.rollout_engine == "hybrid-engine":
        return micro_batches
    return 1


def update(run: Run, perf: GPUPerf, dtype: str, role: RoleSetup, work: Work) -> Iterator[Block]:
    """One trained role's update: its training passes over the step's sequences, then its optimizer step."""
    phase = "critic_update" if role.role == "critic" else "actor_update"
    sh = role.sharding
    p = work.trained
    seqs, n = p.seqs, p.calls
    factor = f.train_flops_factor(run.gradient_checkpointing, role.lora)
    compute = f.compute_seconds(factor * f.token_forward_flops(role.spec, role.lm_head, p.tokens, p.seq_len), perf,
                                dtype, sh.tp)
    multi_node = run.num_gpus > run.gpus_per_node
    grad_bytes = role.trainable_params * run.e / sh.tp
    rs = f.bus_seconds(f.shard_collective_bytes(grad_bytes, sh.dp), perf, multi_node)
    gather_bus, gather_pcie = _gather_seconds(run, perf, role)
    if sh.zero_stage >= 3:  # weights gathered for forward, recompute and backward; gradients reduce-scattered
        comm = n * ((2 + run.gradient_checkpointing) * gather_bus + rs)
    elif sh.zero_stage == 2:  # DeepSpeed ZeRO-2 reduces every micro batch's gradients
        comm = n * rs
    elif sh.zero_stage == 1:
        comm = rs
    else:  # DDP all-reduce
        comm = 2 * rs
    terms = {"compute": compute, "network" if multi_node else "nvlink": comm,
             "pcie": n * (2 + run.gradient_checkpointing) * gather_pcie}
    seconds, bound = _longest(terms)
    seconds += _tp_seconds(run, perf, sh.tp, p.tokens, role.spec.hidden_size,
                           (4 + 2 * run.gradient_checkpointing) * role.spec.num_layers)
    seconds += _sp_seconds(run, perf, dtype, role, p, training=True)  # forward, backward, recompute
    ckpt = " + recompute" if run.gradient_checkpointing else ""
    yield Block(phase, role.role, f"forward + backward{ckpt} × {seqs} sequences in {n} micro batch(es); {p.basis}",
                seconds, bound)

    # optimizer step: the rank's partition (ZeRO ≥ 1 shards the states over dp)
    shard = sh.dp if sh.zero_stage >= 1 else 1
    params = role.trainable_params / sh.tp / shard
    steps = optimizer_steps(run, n)
    times = f" × {steps} (one per micro batch)" if steps > 1 else ""
    if sh.offload_optimizer:
        ranks_on_node = min(run.gpus_per_node, _gpus_of(run, role.role))
        down_up = f.offload_transfer_seconds(params, run.e, perf)
        cpu = f.cpu_optimizer_seconds(params * ranks_on_node, perf, sh.optimizer)
        yield Block(phase, role.role, f"fp32 gradients to the CPU, 16-bit weights back (offload){times}",
                    steps * down_up, "pcie")
        yield Block(phase, role.role, f"CPU optimizer step ({ranks_on_node} rank(s) of a node share its DRAM)"
                    f"{times}", steps * cpu, "host")
    else:
        yield Block(phase, role.role, f"optimizer step on the GPU{times}",
                    steps * f.gpu_optimizer_seconds(params, perf, sh.optimizer), "hbm")
    if sh.zero_stage in (1, 2) and sh.dp > 1:  # ZeRO-1/2 all-gather the updated 16-bit weights
        yield Block(phase, role.role, f"all-gather the updated weights{times}", steps * f.bus_seconds(
            f.shard_collective_bytes(grad_bytes, sh.dp), perf, multi_node), "network" if multi_node else "nvlink")
    if sh.idle_params or sh.idle_optimizer:  # verl's param/optimizer offload: shards to the GPU and back
        moved = (4 * role.trainable_params / sh.tp / sh.dp if sh.idle_params else 0) + (
            8 * role.trainable_params / sh.tp / sh.dp if sh.idle_optimizer else 0)
        yield Block(phase, role.role, "idle offload: shards back to the GPU and out again", f.pcie_seconds(
            2 * moved, perf), "pcie")
