"""Peer memory estimators on memplan's accuracy configurations: the actor alone, per GPU.

Peers, each called through its own code with the model config read from memplan's catalog (no hub access):

* DeepSpeed ``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs`` — the
  functions behind ``estimate_zero{2,3}_model_states_mem_needs_all_live``, "offload none" case, per GPU.
  Parameter counts as ``model_to_params`` takes them, but deduplicated by Parameter identity: on the meta
  device every ``data_ptr()`` is 0, so ``*_all_live`` itself collapses the model to its last tensor
  (its printout is kept in each row's notes to show it).
* ``accelerate estimate-memory`` — ``accelerate.commands.estimate.gather_data`` with the hub look-up replaced
  by the catalog config; the "Training using Adam" column is ``max()`` of its ``estimate_training_usage`` dict,
  as ``estimate_command`` prints it, for the half-precision row (``float16``; bf16 goes the same branch).
* llm-analysis ``llm_analysis.analysis.train`` — with ``AutoConfig.from_pretrained`` answered from the
  catalog (what ``--model_name org/name`` does), ``dtype_name="w16a16e16"``, DeepSpeed ZeRO stage and
  ``dp_size=N``; the figure is ``(weight+op_state+grad+act)_memory_per_gpu``.

Run it with the peers' own environment, never memplan's (see benchmarks/results/peers.md for its setup):

    /work/peers-venv/bin/python benchmarks/peers.py

It imports no memplan. Writes benchmarks/results/peers.json and benchmarks/results/peers.md.
"""

# ---- configuration -------------------------------------------------------------------------------------
MODELS_SINGLE_GPU = [
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen3-0.6B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B",
    "facebook/opt-350m",
    "facebook/opt-1.3b",
    "EleutherAI/pythia-410m",
    "meta-llama/Llama-2-7b-hf",
    "mistralai/Mistral-7B-v0.1",
]
GRADIENT_CHECKPOINTING_SINGLE_GPU = [False, True]   # llm-analysis: recomputation NONE / FULL
SHARDED_MODEL = "meta-llama/Llama-2-7b-hf"
SHARDED_GPUS = [2, 8, 64]
SHARDED_ZERO_STAGES = [2, 3]
SHARDED_GRADIENT_CHECKPOINTING = True
DTYPE = "bf16"                 # Adam, bf16 weights, fp32 master weights and moments
MICRO_BATCH_SIZE = 1
SEQ_LEN = 512                  # prompt_len + gen_len
LORA_RANK = 0                  # full fine-tuning; none of the peers takes a LoRA rank
LLM_ANALYSIS_GPU = "h100-sxm-80gb"
"""llm-analysis needs a GPU; its capacity only sets ``memory_left`` and the largest batch that fits (which
must be ≥ the micro batch, else it asserts), not the per-GPU estimate, so it is raised to 1 PB here."""
CROSS_CHECK_MATERIALIZED = ["Qwen/Qwen2.5-0.5B"]
"""Models also built with real (CPU, bf16) tensors to check that the meta-device parameter count equals
what ``*_all_live`` prints on a materialized model."""
# --------------------------------------------------------------------------------------------------------

import argparse
import contextlib
import datetime
import io
import json
import logging
import platform
import re
import sys
import time
from pathlib import Path

from _machine import machine  # benchmarks/_machine.py: these scripts run from this folder

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

import accelerate
import accelerate.commands.estimate as acc_estimate

import deepspeed
from deepspeed.runtime.zero.stage3 import (
    estimate_zero3_model_states_mem_needs,
    estimate_zero3_model_states_mem_needs_all_live,
)
from deepspeed.runtime.zero.stage_1_and_2 import (
    estimate_zero2_model_states_mem_needs,
    estimate_zero2_model_states_mem_needs_all_live,
)

try:
    import llm_analysis.analysis as la_analysis
    import llm_analysis.config as la_config
    from importlib.metadata import version as _version

    LLM_ANALYSIS_VERSION = _version("llm-analysis")
except ImportError as exc:  # recorded, not fatal: the row's llm_analysis is then null
    la_analysis = la_config = None
    LLM_ANALYSIS_VERSION = f"not installed ({exc})"

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "memplan" / "catalog" / "models"
RESULTS = REPO / "benchmarks" / "results"
GiB = 1024**3


def catalog_entry(name: str) -> dict:
    """The catalog file whose ``name`` or ``aliases`` match ``name`` (case-insensitive)."""
    for path in sorted(CATALOG.glob("*.json")):
        entry = json.loads(path.read_text())
        names = [entry["name"], *entry.get("aliases", [])]
        if name.lower() in (n.lower() for n in names):
            return entry
    raise SystemExit(f"{name}: no entry in {CATALOG}")


def hf_config(entry: dict) -> transformers.PretrainedConfig:
    facts = dict(entry["config"])
    return AutoConfig.for_model(facts.pop("model_type"), **facts)


# ---- DeepSpeed -----------------------------------------------------------------------------------------
def deepspeed_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total_params, largest_layer_params) as DeepSpeed's ``model_to_params``, tied weights counted once by
    identity (``model.parameters()`` dedups them) instead of by ``data_ptr()``, which is 0 on meta."""
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def deepspeed_printed(fn, model, gpus: int) -> str:
    """What ``estimate_zero*_model_states_mem_needs_all_live`` prints for this model (kept as a note)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(model, num_gpus_per_node=gpus, num_nodes=1)
    return buf.getvalue()


def deepspeed_bytes(total: int, largest: int, gpus: int) -> dict:
    _, zero2_gpu = estimate_zero2_model_states_mem_needs(
        total_params=total, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=False)
    _, zero3_gpu, _ = estimate_zero3_model_states_mem_needs(
        total_params=total, largest_layer_params=largest, num_gpus_per_node=gpus, num_nodes=1,
        cpu_offload=False, cpu_offload_params=False, zero_init=True)
    return {"deepspeed_zero2": int(zero2_gpu), "deepspeed_zero3": int(zero3_gpu)}


# ---- accelerate ----------------------------------------------------------------------------------------
class _HubStub:
    config: dict = {}  # no auto_map: accelerate then builds transformers.AutoModel (no LM head)


def accelerate_training(name: str, config) -> dict:
    """``accelerate estimate-memory NAME --library_name transformers`` with the hub answered locally."""
    real_verify, real_from_pretrained = acc_estimate.verify_on_hub, acc_estimate.AutoConfig.from_pretrained
    acc_estimate.verify_on_hub = lambda repo, token=None: _HubStub()
    acc_estimate.AutoConfig.from_pretrained = lambda *a, **k: config
    try:
        args = argparse.Namespace(model_name=name, library_name="transformers", trust_remote_code=False,
                                  dtypes=["float32", "float16"])
        with contextlib.redirect_stdout(io.StringIO()):
            rows = acc_estimate.gather_data(args)
    finally:
        acc_estimate.verify_on_hub = real_verify
        acc_estimate.AutoConfig.from_pretrained = real_from_pretrained
    half = next(r for r in rows if r[0] == "float16")
    usage = half[3]  # estimate_training_usage(fp32 model bytes, "float16") — same branch as "bfloat16"
    return {
        "training_bytes": int(max(usage.values())),  # estimate_command prints max(), not the sum
        "usage_dict": {k: int(v) for k, v in usage.items()},
        "total_size_fp32_bytes": int(rows[0][2]),
        "largest_layer_fp16_bytes": int(half[1]),
    }


# ---- llm-analysis --------------------------------------------------------------------------------------
def llm_analysis_train(name: str, config, gpus: int, zero_stage: int, gc: bool) -> dict:
    """``llm_analysis.analysis.train`` as ``--model_name NAME`` runs it, AutoConfig answered locally."""
    gpu = dict(vars(la_config.gpu_configs[LLM_ANALYSIS_GPU]))
    gpu["name"] = LLM_ANALYSIS_GPU + "-uncapped"
    gpu["mem_per_GPU_in_GB"] = 10**6
    la_config.gpu_configs[gpu["name"]] = la_config.GPUConfig(**gpu)

    class _AutoConfigStub:
        @staticmethod
        def from_pretrained(*a, **k):
            return config

    real = la_config.AutoConfig
    la_config.AutoConfig = _AutoConfigStub
    try:
        summary = la_analysis.train(
            model_name=name, gpu_name=gpu["name"], dtype_name="w16a16e16", log_level="ERROR",
            batch_size_per_gpu=MICRO_BATCH_SIZE, seq_len=SEQ_LEN, ds_zero=zero_stage, dp_size=gpus,
            activation_recomputation=2 if gc else 0)
    finally:
        la_config.AutoConfig = real
    keys = ["num_params_total", "weight_memory_per_gpu", "gradient_memory_per_gpu",
            "optimizer_state_memory_per_gpu", "activation_memory_per_gpu",
            "activation_memory_embedding_output_per_gpu", "(weight+op_state+grad+act)_memory_per_gpu"]
    return {k: int(summary[k]) for k in keys} | {"activation_recomputation": summary["activation_recomputation"],
                                                 "ds_zero": summary["ds_zero"]}


GATED_MLP = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3"}


def llm_analysis_config_widths(config, gpus: int, zero_stage: int, gc: bool) -> dict:
    """The same analysis with a hand-made ModelConfig that takes the MLP width from the config (the HF path
    uses 4h): ``ffn_embed_dim`` = 1.5 · intermediate_size for a gated MLP (its two-matrix formula then counts
    the three matrices' parameters), intermediate_size / ffn_dim otherwise. Head dim, untied LM head and
    biases stay as llm-analysis models them. A note beside the tool's own figure, not the figure."""
    h = config.hidden_size
    inter = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim")
    ffn = inter * 3 // 2 if config.model_type in GATED_MLP else inter
    model_config = la_config.ModelConfig(
        name=config.model_type, num_layers=config.num_hidden_layers, n_head=config.num_attention_heads,
        hidden_dim=h, vocab_size=config.vocab_size, max_seq_len=config.max_position_embeddings,
        num_key_value_heads=getattr(config, "num_key_value_heads", None), ffn_embed_dim=ffn,
        expansion_ratio=ffn / h, model_type=config.model_type)
    analysis = la_analysis.LLMAnalysis(
        model_config, la_config.gpu_configs[LLM_ANALYSIS_GPU + "-uncapped"],
        la_config.get_dtype_config_by_name("w16a16e16"), la_config.ParallelismConfig(dp_size=gpus))
    summary = analysis.training(
        batch_size_per_gpu=MICRO_BATCH_SIZE, seq_len=SEQ_LEN, ds_zero=la_analysis.DSZeRO(zero_stage),
        activation_recomputation=la_analysis.ActivationRecomputation(2 if gc else 0),
        mlp_gated_linear_units=config.model_type in GATED_MLP)
    return {"ffn_embed_dim": ffn, "num_params_total": int(summary["num_params_total"]),
            "total_bytes": int(summary["(weight+op_state+grad+act)_memory_per_gpu"])}


# ---- driver --------------------------------------------------------------------------------------------
def configurations() -> list[dict]:
    rows = [dict(model=m, gpus=1, zero_stage=0, gradient_checkpointing=gc)
            for m in MODELS_SINGLE_GPU for gc in GRADIENT_CHECKPOINTING_SINGLE_GPU]
    rows += [dict(model=SHARDED_MODEL, gpus=n, zero_stage=s, gradient_checkpointing=SHARDED_GRADIENT_CHECKPOINTING)
             for n in SHARDED_GPUS for s in SHARDED_ZERO_STAGES]
    return rows


def run() -> dict:
    t0 = time.time()
    logging.getLogger("llm_analysis").setLevel(logging.ERROR)
    per_model: dict[str, dict] = {}
    out_rows = []
    for cfg in configurations():
        name = cfg["model"]
        if name not in per_model:
            entry = catalog_entry(name)
            config = hf_config(entry)
            # torch.device("meta"), not init_empty_weights: the latter re-wraps every registered Parameter,
            # so a tied LM head becomes a second tensor and is counted twice (Qwen2.5-0.5B: 630 M, not 494 M).
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            total, largest = deepspeed_counts(model)
            check = None
            if name in CROSS_CHECK_MATERIALIZED:
                real = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
                check = deepspeed_printed(estimate_zero3_model_states_mem_needs_all_live, real, 1)
                del real
            per_model[name] = dict(entry=entry, config=config, model=model, total=total, largest=largest,
                                   materialized_zero3_print=check,
                                   accelerate=accelerate_training(name, config))
        pm = per_model[name]
        n = cfg["gpus"]
        peers = deepspeed_bytes(pm["total"], pm["largest"], n)
        printed = deepspeed_printed(estimate_zero2_model_states_mem_needs_all_live, pm["model"], n)
        printed_m = int(re.search(r"Model with (\d+)M total params", printed).group(1))
        peers["accelerate_training"] = pm["accelerate"]["training_bytes"]
        notes = {
            "catalog_name": pm["entry"]["name"],
            "deepspeed_total_params": pm["total"],
            "deepspeed_largest_layer_params": pm["largest"],
            "deepspeed_all_live_on_meta_prints_total_params_M": printed_m,
            "accelerate_usage_dict": pm["accelerate"]["usage_dict"],
            "accelerate_total_size_fp32_bytes": pm["accelerate"]["total_size_fp32_bytes"],
            "accelerate_model_class": "transformers.AutoModel (no LM head)",
        }
        if pm["materialized_zero3_print"] is not None:
            notes["deepspeed_zero3_all_live_materialized_print"] = pm["materialized_zero3_print"]
        if la_analysis is not None:
            la = llm_analysis_train(name, pm["config"], n, cfg["zero_stage"], cfg["gradient_checkpointing"])
            peers["llm_analysis"] = la.pop("(weight+op_state+grad+act)_memory_per_gpu")
            notes["llm_analysis"] = la
            notes["llm_analysis_config_widths"] = llm_analysis_config_widths(
                pm["config"], n, cfg["zero_stage"], cfg["gradient_checkpointing"])
        else:
            peers["llm_analysis"] = None
        out_rows.append({
            "model": name, "gpus": n, "zero_stage": cfg["zero_stage"], "dtype": DTYPE,
            "micro_batch_size": MICRO_BATCH_SIZE, "seq_len": SEQ_LEN,
            "gradient_checkpointing": cfg["gradient_checkpointing"], "lora_rank": LORA_RANK,
            "peers": peers, "notes": notes,
        })
    return {
        "command": "/work/peers-venv/bin/python benchmarks/peers.py",
        "machine": machine_without_gpu(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.time() - t0, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "deepspeed": deepspeed.__version__,
                     "accelerate": accelerate.__version__, "llm-analysis": LLM_ANALYSIS_VERSION},
        "rows": out_rows,
    }


def machine_without_gpu() -> str:
    return f"{machine()}, no GPU (estimators only)"


def gib(x) -> str:
    return "—" if x is None else f"{x / GiB:.2f}"


def markdown(result: dict) -> str:
    v = result["versions"]
    lines = [
        "# Peer estimators on memplan's accuracy configurations (actor alone)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Date: {result['date']}; {result['seconds']} s  ",
        f"Versions: Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
        f"deepspeed {v['deepspeed']}, accelerate {v['accelerate']}, llm-analysis {v['llm-analysis']}",
        "",
        f"dtype {DTYPE}, Adam, micro batch {MICRO_BATCH_SIZE}, seq_len {SEQ_LEN} (prompt + generation), full "
        "fine-tuning. Per-GPU GiB (2^30 bytes). Each peer sees the actor only. DeepSpeed: model states, "
        "\"offload none\" row of its printout (ZeRO-2 and ZeRO-3 at N GPUs; for stage-0 rows, N = 1). "
        "accelerate: `estimate-memory`'s \"Training using Adam\" for float16 (= bf16), independent of N, stage "
        "and checkpointing. llm-analysis: `(weight+op_state+grad+act)_memory_per_gpu` with the row's ZeRO stage, "
        "dp_size = N and activation recomputation FULL when checkpointing, else NONE.",
        "",
        "Ψ: parameters of the model as built (tied embeddings once); Ψ la: llm-analysis's own count. "
        "\"la, config FFN\": llm-analysis again with the MLP width taken from the config (a note, not the "
        "peer's figure; see below).",
        "",
        "| model | N | ZeRO | ckpt | Ψ (M) | DS ZeRO-2 | DS ZeRO-3 | accelerate | llm-analysis | of which act "
        "| Ψ la (M) | la, config FFN |",
        "|---|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        p, nt = r["peers"], r["notes"]
        la, la_w = nt.get("llm_analysis", {}), nt.get("llm_analysis_config_widths", {})
        psi_la = la.get("num_params_total")
        lines.append(
            f"| {r['model']} | {r['gpus']} | {r['zero_stage']} | {'yes' if r['gradient_checkpointing'] else 'no'} "
            f"| {nt['deepspeed_total_params'] / 1e6:,.0f} "
            f"| {gib(p['deepspeed_zero2'])} | {gib(p['deepspeed_zero3'])} | {gib(p['accelerate_training'])} "
            f"| {gib(p['llm_analysis'])} | {gib(la.get('activation_memory_per_gpu'))} "
            f"| {'—' if psi_la is None else f'{psi_la / 1e6:,.0f}'} | {gib(la_w.get('total_bytes'))} |")
    lines += ["", SETUP.strip(), "", MISSES.strip(), ""]
    return "\n".join(lines)


SETUP = """
## Environment (outside the repo; memplan is not installed there and this script does not import it)

```
python3 -m venv /work/peers-venv
/work/peers-venv/bin/pip install torch==2.13.0            # first: the CPU wheel; never let pip resolve torch
DS_BUILD_OPS=0 /work/peers-venv/bin/pip install --no-build-isolation deepspeed accelerate transformers
/work/peers-venv/bin/pip install llm-analysis             # pins transformers<5, huggingface-hub<0.15 ...
/work/peers-venv/bin/pip install transformers==5.23.0 huggingface_hub==2.4.0 tokenizers==0.23.3  # ... restored
```

llm-analysis 0.2.2 installs, but its pins (`transformers>=4.28.1,<5`, `huggingface-hub>=0.14.1,<0.15`) would
downgrade transformers to 4.31 (no Qwen3) and break accelerate (`huggingface_hub>=0.21`), so the newer ones are
put back; `pip check` then reports the two unmet pins. llm-analysis uses them only to fetch a config from the
hub (`get_model_config_from_hf`: `AutoConfig.from_pretrained`, and `HfApi` for model listings), which this
script answers from the catalog.
"""


MISSES = """
## What each peer misses

None of them knows RL model sets (reference, critic, reward, rollout engine), so every figure above is the
actor's training alone; none takes a LoRA rank either. For a LoRA run they report the same full fine-tuning
figures (full-model gradients and Adam states), not the adapter's.

**DeepSpeed** (`deepspeed/runtime/zero/stage_1_and_2.py`, `stage3.py`, `estimate_zero{2,3}_model_states_mem_needs`):
model states only. ZeRO-2, offload none: `2Ψ + 18Ψ/N` (bf16 weights; bf16 + fp32 gradients, fp32 master
weights, two fp32 moments, the last four sharded). ZeRO-3: `4 · largest layer + 18Ψ/N` (the gathered layer, no
separate unsharded weights). No activations, no logits or loss temporaries, no KV cache or generation,
no optimizer-step temporaries, no allocator or CUDA context, no other models. No stage 0 or 1: the stage-0
rows show its ZeRO-2 / ZeRO-3 figure at N = 1 (both then count the full 18Ψ). The `*_all_live` functions count
parameters by `data_ptr()`, which is 0 for every tensor on the meta device: on a meta model they print only
the last tensor's count (the `deepspeed_all_live_on_meta_prints_total_params_M` note; e.g. 131 M for
Llama-2-7B, its LM head) — this script passes the identity-deduplicated count to the underlying functions.

**accelerate** (`accelerate/commands/estimate.py`, `estimate_training_usage`): builds `AutoModel` (the base
model, without the LM head — the untied head of Llama-2, Mistral and Pythia is left out) in fp32 and, for
float16/bf16, returns `{model: 4Ψ, gradients: 6Ψ, optimizer: 8Ψ, step: 8Ψ}`; the "Training using Adam" column
prints `max()` of these, i.e. 8 bytes per base-model parameter, not their sum (18Ψ). It has no bf16 option on the
command line (`float16` row; the function treats `bfloat16` the same), no batch, sequence length,
activations, logits, KV cache, gradient checkpointing, number of GPUs or sharding.

**llm-analysis** (`llm_analysis/analysis.py`, `LLMAnalysis.training`): weights 2Ψ, gradients in the master
dtype 4Ψ, Adam 12Ψ (master + two moments), sharded by ZeRO stage over dp_size, plus activations after
Korthikanti et al. (arXiv 2205.05198) with flash attention assumed, and bf16 logits `V·b·s·2`. Its parameter
count is its own closed form from the HF config (`get_model_config_from_hf`): FFN width always `4h` (the
config's `intermediate_size` is ignored, and a gated MLP counts two matrices, not three), head dim `h/a`
(Qwen3's 128-wide heads at h = 1024 are undercounted), input embedding only (`shared_embedding=True`: an untied
LM head is missed), no biases, norm weights only (2h per layer + h). It misses: fp32 logits and the loss's
temporaries (log-softmax, gather), the ZeRO-3 gathered-layer buffer and prefetch, optimizer-step
temporaries, generation and KV cache (training mode), allocator and CUDA context, other models. At micro batch
1 it counts the bf16 logits twice (`training()` adds `activation_memory_embedding_output_per_gpu` to a batch-1
figure that already holds it; Llama-2-7B with checkpointing: 32·s·h·2 + 2·V·s·2 = 199,753,728 bytes). The
"la, config FFN" column gives it the config's MLP width (1.5 × intermediate_size for gated MLPs, so that its
two-matrix count equals the three matrices' parameters); head dim, untied head and biases stay its own.

**This script's own choices**: models on `torch.device("meta")` (accelerate's `init_empty_weights` re-wraps
parameters and so unties tied embeddings: Qwen2.5-0.5B would count 630 M instead of 494 M; accelerate's own
path builds the base model, which has no head, so it is unaffected); llm-analysis's GPU capacity raised
(it asserts when the micro batch does not fit, e.g. Llama-2-7B at N = 1 on 80 GB), which changes only its
`memory_left`.
"""


def main() -> None:
    result = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "peers.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
