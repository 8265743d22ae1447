"""Turn AgileRL's memory-profiling fixtures into memplan corpus records (benchmarks/corpus/agilerl.jsonl).

Source: github.com/AgileRL/AgileRL, branch ``memory/profiling-rig`` at ``COMMIT``, ``tools/memory_profiling/
fixtures/`` — per-phase NVML device peaks of GRPO (LoRA, colocated vLLM in sleep mode) measured by
``tools/memory_profiling/harness.py``; benchmarks/corpus/README.md says how each setting below was pinned.

Usage (needs the repository snapshot as a bare git directory, e.g. from the project's ``fetch`` tool)::

    python benchmarks/corpus/build_agilerl.py --git-dir /work/.mirror/AgileRL+AgileRL/repo

The records are data: each keeps the fixture's raw fields verbatim and the blob sha of the file it came from.
Re-running the script on the same commit rewrites the file byte for byte; never edit it by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from memplan.harness.records import MeasuredDevice, MeasuredPoint, Source  # noqa: E402
from memplan.report import ArchConfig, EstimateRequest  # noqa: E402

# --- configuration -----------------------------------------------------------------------------------------
URL = "https://github.com/AgileRL/AgileRL"
BRANCH = "memory/profiling-rig"
COMMIT = "0151c6601f99d8a037f9479fed26ff8df82e172f"  # tip of the branch in the snapshot read (2026-08-12)
FIXTURES = "tools/memory_profiling/fixtures"
OLD_FIXTURES = "agilerl/memory/fixtures"  # where they lived before COMMIT moved them (history lookups)
OUT = Path(__file__).resolve().parent / "agilerl.jsonl"
# Harness milestones (commits on the branch): a fixture whose data was committed after one has its effect.
PINNED_COMPLETIONS = "c02e7ac8"  # min_output_tokens = max_output_tokens: every completion at full length
IDLE_WAIT = "f2ef8209"  # wait_for_idle: the next point's floor is read after the previous process is gone
SLEEP_BEFORE_WINDOW = "a260d23b"  # the engine is put to sleep before the training window opens

CATALOG_GPU = {"NVIDIA A100-SXM4-40GB": "A100-40GB", "NVIDIA L4": "L4"}
# NVML's v1 total per device, which the fixtures do not record. AgileRL's sampler reads pynvml's v1
# nvmlDeviceGetMemoryInfo (tools/memory_profiling/nvml.py), whose `used` is "Sum of Reserved and Allocated device
# memory" and whose `total` is "Total physical device memory" (NVML API reference, nvmlMemory_t): the driver's
# reserve is NVML's total − torch's total_memory, and every NVML peak carries it.
NVML_TOTAL = {
    # 40 GB of HBM2 (A100 datasheet: five 8 GiB stacks) = 40,960 MiB, as nvidia-smi shows an A100-SXM4-40GB
    "NVIDIA A100-SXM4-40GB": (40_960 * 2**20, "NVML v1 total taken as the A100-SXM4-40GB's 40 GiB of HBM2 (40,960 "
                              "MiB, nvidia-smi's total for this card); the fixtures record torch's total only"),
    # nvidia-smi's total on an L4 with ECC on, memplan's former L4 capacity (catalog memory_basis)
    "NVIDIA L4": (23_034 * 2**20, "NVML v1 total taken as nvidia-smi's 23,034 MiB for an L4 (ECC on; the fixtures "
                  "record torch's total only, not the ECC mode)"),
}
# Models the memplan catalog names by their HF id; the rest are given inline from the fixture's own geometry.
CATALOG_MODELS = {
    "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct", "allenai/OLMoE-1B-7B-0924-Instruct", "google/gemma-4-E2B-it",
    "google/gemma-4-E4B-it",
}
# SmolLM2-1.7B-Instruct is not in the catalog; its config.json (llama), as the fixture's model_spec records it.
INLINE_ARCH = {"HuggingFaceTB/SmolLM2-1.7B-Instruct": "llama"}
PARTIAL_DEVICE = {"smollm2.partial.jsonl": ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "NVIDIA L4", 23659151360)}


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True).stdout


def is_ancestor(git_dir: str, a: str, b: str) -> bool:
    return subprocess.run(["git", f"--git-dir={git_dir}", "merge-base", "--is-ancestor", a, b]).returncode == 0


def measured_at(git_dir: str, rel: str) -> str:
    """The commit that last changed this fixture's measured data (before COMMIT moved it unchanged)."""
    old = f"{OLD_FIXTURES}/{rel}"
    commits = git(git_dir, "log", "--format=%H", f"{COMMIT}^", "--", old).split()
    last, prev = None, None
    for c in reversed(commits):
        text = git(git_dir, "show", f"{c}:{old}")
        data = text if rel.endswith(".jsonl") else json.dumps(json.loads(text)["measured"], sort_keys=True)
        if data != prev:
            last, prev = c, data
    return last or COMMIT


def settings_of(knobs: dict, model_id: str, quantization: str, versions: dict) -> dict:
    """The knobs as stored, completed with the harness's fixed choices (tools/memory_profiling/harness.py)."""
    k = {
        "algorithm": "grpo", "attn_implementation": "auto", "lora_target_modules": "all-linear",
        "lora_target_scope": "", "memory_efficient_params": True, "n_prompts": 1, "quantization": "none",
        "gpu_memory_utilization": 0.45,
    }  # SweepPoint.from_dict's defaults, for fixtures written before a knob was stored
    k.update(knobs)
    seq = int(k["seq_len"])
    prompt = max(seq // 4, 8)
    return {
        **k,
        "model_name": model_id,
        "prompt_len": prompt,  # SweepPoint.prompt_len
        "max_output_tokens": seq - prompt,
        "lora_alpha": 2 * int(k["lora_rank"]),
        "use_vllm": True,
        "vllm_sleep_mode": True,
        "vllm_sleep_mode_level": 1,  # VLLMConfig default: weights backed up to host, KV cache dropped
        "vllm_max_num_seqs": int(k["group_size"]),
        "vllm_max_lora_rank": int(k["lora_rank"]),
        # agilerl/memory/formulas.py:280 resolve_max_num_batched_tokens (llm_utils.py:2040), max_model_len = seq_len
        "vllm_max_num_batched_tokens": min(int(k["group_size"]) * seq, max(seq, int(k["group_size"]) * 8192)),
        "vllm_enforce_eager": None,  # not set: vLLM captures CUDA graphs
        "vllm_engine_weights": "bf16 checkpoint",  # VLLMConfig.quantization unset even for an nf4 trainer
        "vllm_distributed_executor_backend": "external_launcher",  # in-process engine, one CUDA context
        "trainer_dtype": "bf16 checkpoint (torch_dtype of config.json)",
        "bnb_4bit_quant_type": "nf4" if k["quantization"] == "nf4" else None,
        "bnb_4bit_use_double_quant": True if k["quantization"] == "nf4" else None,
        "gradient_checkpointing": True,  # GRPO default, use_reentrant=False
        "use_separate_reference_adapter": True,  # GRPO default
        "beta": 0.001,  # GRPO default
        "update_epochs": 1,
        "optimizer": "torch.optim.AdamW (defaults)",
        "cast_logprobs_to_fp32": True,
        "chunk_rows": None,  # auto: 256 MiB / (vocab x 4) rows, clamped to [128, 4096]
        "use_liger_loss": False,
        "warmup_steps": 0,  # the measured update is the agent's first
        "rewards": "torch.randn per completion (no reward model)",
        "agilerl": versions.get("agilerl"),
    }


def request_of(s: dict, catalog_gpu: str, arch: dict | None) -> tuple[EstimateRequest, list[str]]:
    """The memplan request for one point, and the assumptions that mapping makes."""
    seq, group, mb, n_prompts = int(s["seq_len"]), int(s["group_size"]), int(s["micro_batch"]), int(s["n_prompts"])
    rows = group * n_prompts
    attention_only = s["lora_target_modules"] != "all-linear" and not any(
        m in s["lora_target_modules"] for m in ("gate", "up_proj", "down_proj", "expert", "fc"))
    a = [
        "engine 'torch', one GPU: AgileRL runs plain PyTorch without an accelerator in this harness",
        "trainer weights in bf16 (the checkpoints' torch_dtype); peft keeps the LoRA adapters in fp32",
        f"micro_batch_size = min(micro_batch {mb}, completions {rows}) = {min(mb, rows)}: GRPO.learn caps "
        "the micro batch at the rows the update has; one AdamW step per micro batch (no accumulation)",
        f"prompt_len {s['prompt_len']} = max(seq_len // 4, 8), gen_len {s['max_output_tokens']} = seq_len - "
        "prompt_len (SweepPoint.prompt_len, max_output_tokens)",
        "attention 'sdpa': attn_implementation 'auto' resolves to SDPA when flash_attn is not installed (not in "
        "AgileRL's llm extra)",
        "logprob_kernel 'row-chunked' (chunk_rows auto: 256 MiB / (vocab x 4) rows, clamped to [128, 4096]): "
        "AgileRL's fused_linear_logprobs_chunked over every position (llm_ops/fused_logprobs.py:103, 162; "
        "base.py:4896 _get_logprobs, 5514 _resolve_fused_chunk_rows)",
        "ref 'lora-adapter': AgileRL keeps a separate 'reference' LoRA adapter (fp32, a copy of the actor's) beside "
        "the trained one (use_separate_reference_adapter, base.py:2766) and runs the reference rows with it",
        "idle_offload 'params': AgileRL moves the trainer's weights (base + adapters; Module.to) to host RAM "
        "before vLLM wakes (use_memory_efficient_params: base.py:6257 _prepare_vllm_for_generation, "
        "llm_utils.py:1587 move_params_to_cpu) and brings them back for learn() (base.py:6216); the adapter is "
        "synced to vLLM from the host (add_lora, base.py:5111)",
        "vllm_gpu_memory_utilization as the point ran it; vLLM takes it of torch's total_memory "
        f"({s.get('_total')} B here), memplan of its catalog capacity for {catalog_gpu}",
        "reward 'rule': the harness feeds random rewards, no reward model",
        f"vllm_max_num_batched_tokens {s['vllm_max_num_batched_tokens']} = min(max_num_seqs x max_model_len, "
        "max(max_model_len, max_num_seqs x 8192)) (AgileRL's resolve_max_num_batched_tokens, build_vllm_llm_init_"
        "kwargs)",
        "processes_per_gpu 1: vLLM runs in-process (external_launcher), one CUDA context",
    ]
    if s["quantization"] == "nf4":
        a.append("quantize_base 'int4' for bitsandbytes nf4 with double quantization (lm_head kept in bf16 by "
                 "AgileRL); the vLLM engine loads the bf16 checkpoint")
    if attention_only:
        a.append(f"lora_targets 'attention' for target modules {s['lora_target_modules']}")
    if s["lora_target_scope"]:
        a.append(f"lora_target_scope '{s['lora_target_scope']}' (adapters on the language model only): memplan "
                 "models the text model alone")
    if arch is not None:
        a.append("model given inline from the fixture's model_spec.arch (its reading of config.json): not in "
                 "memplan's catalog")
    model: str | ArchConfig = s["model_name"]
    if arch is not None:
        model = ArchConfig(
            model_type=INLINE_ARCH[s["model_name"]], hidden_size=arch["hidden_size"],
            num_hidden_layers=arch["n_layers"], num_attention_heads=arch["n_heads"],
            num_key_value_heads=arch["n_kv_heads"], head_dim=arch["head_dim"],
            intermediate_size=arch["intermediate_size"], vocab_size=arch["vocab_size"],
            tie_word_embeddings=arch["tied_embeddings"], max_position_embeddings=arch["max_position_embeddings"])
    req = EstimateRequest(
        model=model, algo="grpo", gpus=f"1x{catalog_gpu}", reward="rule", engine="torch", dtype="bf16",
        gradient_checkpointing=True, attention="sdpa", logprob_kernel="row-chunked",
        logprob_chunk_rows=s["chunk_rows"], lora_rank=int(s["lora_rank"]),
        lora_targets="attention" if attention_only else "all-linear",
        quantize_base="int4" if s["quantization"] == "nf4" else "none",
        ref="lora-adapter" if s["use_separate_reference_adapter"] else "lora-shared",
        micro_batch_size=min(mb, rows), rollout_batch_size=n_prompts, group_size=group,
        prompt_len=int(s["prompt_len"]), gen_len=int(s["max_output_tokens"]), rollout_engine="vllm",
        vllm_gpu_memory_utilization=float(s["gpu_memory_utilization"]), vllm_sleep_mode=True,
        idle_offload="params" if s["memory_efficient_params"] else "none",
        vllm_max_num_batched_tokens=s["vllm_max_num_batched_tokens"])
    return req, a


def notes_of(git_dir: str, at: str, rel: str) -> list[str]:
    n = []
    if is_ancestor(git_dir, PINNED_COMPLETIONS, at):
        n.append("completion length pinned (min_output_tokens = max_output_tokens): every completion ran to the "
                 "full budget, as the estimate assumes")
    else:
        n.append("completion length sampled, not pinned: completions may have stopped at EOS before the budget, "
                 "so the training peak can lie below the full-length bound memplan estimates (AgileRL measured "
                 "two identical gemma-4-E2B runs 30 % apart this way)")
    if not is_ancestor(git_dir, IDLE_WAIT, at) or rel.endswith("longctx.json"):
        n.append("measured before (or, for some long-context points, while) wait_for_idle landed: the floor "
                 "may include the previous point's process, which inflates a device peak")
    if not is_ancestor(git_dir, SLEEP_BEFORE_WINDOW, at):
        n.append("training window may include the awake engine (measured before the harness slept it first)")
    if "/pending/" in f"/{rel}":
        n.append("held back by AgileRL in fixtures/pending/ (see its README for why); the measurement is kept")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--git-dir", required=True, help="bare git directory of AgileRL/AgileRL")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    g = args.git_dir
    files = [f for f in git(g, "ls-tree", "-r", "--name-only", COMMIT, FIXTURES).split()
             if f.endswith((".json", ".jsonl"))]
    records: list[MeasuredPoint] = []
    for path in sorted(files):
        rel = path.removeprefix(FIXTURES + "/")
        sha = git(g, "rev-parse", f"{COMMIT}:{path}").strip()
        text = git(g, "show", f"{COMMIT}:{path}")
        at = measured_at(g, rel)
        if path.endswith(".jsonl"):
            model_id, dev_name, total = PARTIAL_DEVICE[Path(path).name]
            points = [json.loads(line) for line in text.splitlines() if line.strip()]
            versions: dict = {}
            quant, arch = "none", None
            extra_assumptions = ["device and model from the file's name and AgileRL's commit message (the "
                                 "SmolLM2 re-sweep on the L4 whose checkpoint this is); the file names neither"]
            if model_id in INLINE_ARCH:
                base = json.loads(git(g, "show", f"{COMMIT}:{FIXTURES}/HuggingFaceTB__SmolLM2-1.7B-Instruct@"
                                                 "NVIDIA-L4.json"))
                arch = base["model_spec"]["arch"]
                versions = {**base["framework_versions"]}
                extra_assumptions.append("versions as the SmolLM2 L4 fixture records them (the partial file has "
                                         "none)")
        else:
            fx = json.loads(text)
            model_id, dev_name, total = fx["model_id"], fx["device"]["name"], fx["device"]["total_bytes"]
            points, versions = fx["measured"], dict(fx["framework_versions"])
            quant = fx.get("quantization") or "none"
            arch = fx["model_spec"]["arch"] if model_id in INLINE_ARCH else None
            extra_assumptions = []
        catalog_gpu = CATALOG_GPU[dev_name]
        nvml_total, nvml_assumption = NVML_TOTAL[dev_name]
        stem = Path(rel).name.removesuffix(".jsonl").removesuffix(".json")
        notes = notes_of(g, at, rel)
        for i, p in enumerate(points):
            s = settings_of(p["knobs"], model_id, p["knobs"].get("quantization", quant), versions)
            s["_total"] = total
            req, assumptions = request_of(s, catalog_gpu, arch)
            assumptions.append(nvml_assumption)
            del s["_total"]
            phase = p["phase"]
            kn = p["knobs"]
            pid = (f"{stem}/s{kn['seq_len']}-mb{kn['micro_batch']}-g{kn['group_size']}-r{kn['lora_rank']}"
                   f"-u{float(kn.get('gpu_memory_utilization', 0.45)):.4f}")
            raw = {k: v for k, v in p.items() if k != "knobs"}
            point_notes = list(notes)
            if phase == "training":
                point_notes.append(
                    "device_peak_bytes = max(NVML 10 ms poll peak, NVML floor at window start + growth of torch's "
                    "max_memory_reserved over the window): the window covers learn() — the fused no-grad "
                    "reference+actor log-prob pass and the update — with the engine asleep")
                point_notes.append("torch_max_allocated/reserved_bytes are absolute and unusable: vLLM's CuMem "
                                   "pages stay on torch's books after sleep frees them (AgileRL measured 9.33 GiB "
                                   "allocated against 0.91 GiB used on the device)")
            else:
                point_notes.append("device_peak_bytes = NVML 10 ms poll peak of device used memory around "
                                   "get_action() (engine woken, trainer weights on the host)")
            records.append(MeasuredPoint(
                id=f"agilerl/{pid}/{phase}", point=f"agilerl/{pid}",
                source=Source(kind="public", url=f"{URL}/tree/{BRANCH}", commit=COMMIT, path=path, sha=sha,
                              measured_at_commit=at, locator=f"{'line' if path.endswith('.jsonl') else 'measured'}"
                                                             f"[{i}]"),
                framework="agilerl", framework_version=str(versions.get("agilerl", "")), versions=versions,
                settings=s, device=MeasuredDevice(name=dev_name, total_bytes=total, count=1, catalog_gpu=catalog_gpu,
                                                  nvml_total_bytes=nvml_total),
                quantity="nvml_device_peak",
                phases=("rollout",) if phase == "generation" else ("scoring", "actor_update"),
                source_phase=phase, measured_bytes=int(p["device_peak_bytes"]), outcome="ran", raw=raw,
                # warmup_steps=0: get_action() runs before the agent's first learn(), so no AdamW state exists yet
                before_first_optimizer_step=phase == "generation" and s["warmup_steps"] == 0,
                # both torch counters carry vLLM's CuMem pages (allocated and reserved alike): their difference does not
                allocator_slack_bytes=(int(p["torch_max_reserved_bytes"]) - int(p["torch_max_allocated_bytes"])
                                       if p.get("torch_max_reserved_bytes") and p.get("torch_max_allocated_bytes")
                                       else None),
                request=req, assumptions=extra_assumptions + assumptions, notes=point_notes))
    ids = [r.id for r in records]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:  # the same knobs measured twice in one file: number them in file order
        seen: dict[str, int] = {}
        fixed = []
        for r in records:
            if r.id in dupes:
                seen[r.id] = seen.get(r.id, 0) + 1
                r = r.model_copy(update={"id": f"{r.id}#{seen[r.id]}", "point": f"{r.point}#{seen[r.id]}"})
            fixed.append(r)
        records = fixed
    args.out.write_text("".join(r.model_dump_json(exclude_none=False) + "\n" for r in records))
    print(f"{len(records)} records from {len(files)} files -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
