"""The analytic estimator: per-GPU peak memory of an RL fine-tuning run, model by model, phase by phase.

``estimate(request)`` resolves the request (``resolve``), computes each role's model states under its
sharding (``parallel``), runs the algorithm's recipe (``algorithms``) through the ledger, and reports the
peak over phases. Pure Python: no torch, microseconds.

Known limitations:
* Allocator fragmentation (reserved − allocated) is not modeled; the CUDA tier measures it. Leave headroom.
* Dropout is assumed off (DeepSpeed-Chat's ``--disable_actor_dropout``, TRL and verl disable it for RL).
* Tensor parallelism divides weights, most activations, KV heads and logits by the TP degree; norms' and
  residual activations are counted as split too (Megatron sequence parallelism), which under-counts TP
  without it.
* The hybrid engine's inference workspace beyond the KV cache, CUDA graphs of vLLM, and NCCL's buffers are
  approximations; the CUDA tier is the judge.
* MoE activations assume a perfectly balanced router (top-k experts per token).
"""

from __future__ import annotations

from memplan.estimator.algorithms import EXPERIENCE_BYTES_PER_TOKEN, phases, role_states
from memplan.estimator.ledger import Item, line_item, phase_report
from memplan.estimator.resolve import Run, resolve
from memplan.report import EstimateRequest, Report

CUBLAS_WORKSPACE_BYTES = 32 * 1024**2
"""cuBLAS workspace torch keeps per stream on Hopper/Ampere (CUBLAS_WORKSPACE_CONFIG default, 4 MiB × 8)."""
NCCL_BUFFER_BYTES = 256 * 1024**2
"""NCCL_BUFFSIZE 4 MiB × up to 32 channels × send/recv, once more than one GPU communicates."""
TOP_TERMS = 6


def _fixed_items(run: Run) -> list[Item]:
    items = [
        Item("runtime", "other", run.cuda_context_bytes, "CUDA context"),
        Item("runtime", "other", CUBLAS_WORKSPACE_BYTES, "cuBLAS workspace"),
    ]
    if run.num_gpus > 1:
        items.append(Item("runtime", "other", NCCL_BUFFER_BYTES, "NCCL buffers"))
    return items


def _resident_items(run: Run, states) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for r in run.roles:
        st = states[r.role]
        items = []
        for category, n_bytes, note in (
            ("parameter", st.parameter, "weights"),
            ("optstate", st.optstate, "optimizer states + fp32 master" if r.sharding.master_weights
             else "optimizer states"),
            ("buffer", st.buffer, "engine gradient buckets"),
        ):
            if n_bytes:
                items.append(Item(r.role, category, n_bytes, note))
        out[r.role] = items
    return out


def _model_report(run: Run, r, st) -> dict:
    return dict(
        role=r.role, name=r.spec.name, num_params=r.num_params, trainable_params=r.trainable_params,
        trainable=r.trainable, zero_stage=r.sharding.zero_stage, gpus=r.sharding.dp * r.sharding.tp,
        resident={"parameter": st.parameter, "optstate": st.optstate, "buffer": st.buffer},
        host_bytes=st.host, shares_weights_with=r.shares_weights_with,
    )


def estimate(request: EstimateRequest | None = None, /, **kwargs) -> Report:
    """Estimate the per-GPU peak memory of one run.

    ``estimate(EstimateRequest(...))`` or ``estimate(model=..., algo=..., gpus=..., **knobs)``.
    Raises ``memplan.errors.InputError`` (naming the field) or pydantic's ``ValidationError`` on bad input.
    """
    if request is None:
        request = EstimateRequest(**kwargs)
    elif kwargs:
        request = request.model_copy(update=kwargs)
        request = EstimateRequest.model_validate(request.model_dump())
    run = resolve(request)
    states = {r.role: role_states(r, run) for r in run.roles}
    recipe = phases(run, states)
    fixed = _fixed_items(run)
    resident = _resident_items(run, states)
    experience = run.experience_seqs * run.train_seq_len * EXPERIENCE_BYTES_PER_TOKEN
    exp_item = [Item("actor", "buffer", experience, "experience buffer")] if experience else []

    everything = fixed + [item for items in resident.values() for item in items]
    reports: list[dict] = []
    residents: list[list[Item]] = []
    for phase, activities in recipe.items():
        extra = exp_item if phase != "rollout" else []
        if run.placement == "split":  # each role on its own GPUs: the busiest group sets the phase
            candidates = []
            for role, items in resident.items():
                own = [act for act in activities if act.items and act.items[0].role == role]
                group_resident = fixed + items
                candidates.append((phase_report(phase, group_resident, own, extra if role == "actor" else [],
                                                group=role), group_resident))
            report, group_resident = max(candidates, key=lambda c: c[0]["total_bytes"])
            reports.append(report)
            residents.append(group_resident)
        else:
            reports.append(phase_report(phase, everything, activities, extra))
            residents.append(everything)

    peak_index = max(range(len(reports)), key=lambda i: reports[i]["total_bytes"])
    peak = reports[peak_index]
    terms = [line_item(item) for item in residents[peak_index]] + peak["items"]
    host_per_gpu = sum(st.host for st in states.values())
    host_per_node = host_per_gpu * run.gpus_per_node
    notes = []
    if host_per_node > run.host_ram_bytes_per_node:
        notes.append(f"CPU offload needs {host_per_node / 2**30:.0f} GiB of host RAM per node, more than the "
                     f"{run.host_ram_bytes_per_node / 2**30:.0f} GiB given (host_ram_bytes_per_node)")
    if run.rollout_engine == "vllm":
        notes.append("vLLM assumed in sleep mode outside rollout; its CUDA graphs are not counted "
                     "(enforce_eager avoids them)")
    total = peak["total_bytes"]
    return Report.model_validate(dict(
        request=request, gpu=run.gpu_name, num_gpus=run.num_gpus, fits=total <= run.capacity_bytes,
        peak_bytes_per_gpu=total, capacity_bytes=run.capacity_bytes,
        headroom_bytes=run.capacity_bytes - total, peak_phase=peak["phase"],
        fixed_bytes=sum(item.bytes for item in fixed), phases=reports,
        resident_items=[line_item(item) for item in everything],
        models=[_model_report(run, r, states[r.role]) for r in run.roles],
        deciding_terms=sorted(terms, key=lambda item: -item["bytes"])[:TOP_TERMS],
        host_bytes_per_node=host_per_node, host_fits=host_per_node <= run.host_ram_bytes_per_node, notes=notes,
    ))


def compare(requests: list[EstimateRequest]) -> list[Report]:
    """Estimate several runs (e.g. the same model under each algorithm) for a side-by-side view."""
    return [estimate(req) for req in requests]


__all__ = ["compare", "estimate"]
