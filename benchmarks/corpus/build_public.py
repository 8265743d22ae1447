"""Public fit/OOM outcomes and measured peaks beyond AgileRL, as memplan corpus records (issue 16).

One output file per source (``benchmarks/corpus/public_<source>.jsonl``); benchmarks/corpus/README.md says how each
source's settings were pinned. Every point is a fact read from a repository file at a named commit: the script
checks that the line it quotes is in that file (``quote``) and keeps the quote verbatim in ``raw``, so a change
of the source shows up as a failure here, not as a silently different record.

* ``remax`` — the ReMax README's "Memory Efficient" table (github.com/liziniu/ReMax @ 536ba49c): Llama-2-7B on
  A100-80GB, PPO and ReMax, the largest batch per GPU that ran, or OOM. ``outcome`` records only.
* ``dschat`` — DeepSpeed-Chat's three README examples (github.com/microsoft/DeepSpeedExamples @ e468799f, the
  release the README's timings were measured at): OPT-1.3B on one A6000, OPT-13B on 8×A100-40G, OPT-66B on
  64×A100-80G, each run by the step-3 script ``train.py`` picks. ``outcome`` records (ran) only.
* ``torchtune`` — torchtune's README "Optimization flags" table (github.com/pytorch/torchtune @ 1814feb1): the
  "+ Packed Dataset" row, Llama-3.2-3B full fine-tune on an A100, ``torch.cuda`` peak active bytes.

Usage (the repository snapshots as bare git directories, e.g. from the project's ``fetch`` tool)::

    python benchmarks/corpus/build_public.py [--remax DIR] [--dschat DIR] [--torchtune DIR]

Re-running on the same commits rewrites the files byte for byte; never edit them by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from memplan.frameworks import dschat  # noqa: E402
from memplan.harness.records import MeasuredDevice, MeasuredPoint, Source  # noqa: E402
from memplan.report import EstimateRequest  # noqa: E402

OUT = Path(__file__).resolve().parent
MIRROR = Path("/work/.mirror")
GiB = 1 << 30
PPO_PHASES = ("rollout", "scoring", "actor_update", "critic_update")
REMAX_PHASES = ("rollout", "scoring", "actor_update")  # no critic


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True).stdout


def blob(git_dir: Path, commit: str, path: str) -> tuple[str, str]:
    """(text, git blob sha) of ``path`` at ``commit``."""
    return git(git_dir, "show", f"{commit}:{path}"), git(git_dir, "rev-parse", f"{commit}:{path}").strip()


def quote(text: str, line: str) -> str:
    """``line`` as it stands in ``text`` (the fact a record rests on); fails when the source no longer says it."""
    if line not in text:
        raise SystemExit(f"the source no longer says: {line!r}")
    return line


# --- ReMax README -----------------------------------------------------------------------------------------------
REMAX_URL = "https://github.com/liziniu/ReMax"
REMAX_COMMIT = "536ba49cc2f9a1a76941045388a44757e2533e75"  # 2023-12-16, "add responses": adds the table
REMAX_SCRIPT = "step3_rlhf_finetuning/training_scripts/llama2/run_llama2_7b.sh"
# (GPUs, offload, method, the table's cell verbatim, per-GPU batch that ran or None for OOM)
REMAX_ROWS = [
    (4, False, "ppo", "| 4    | False   | PPO    | ❌ (OOM)            |", None),
    (4, False, "remax", "| 4    | False   | ReMax  | **4x26=104**       |", 26),
    (4, True, "ppo", "| 4    | True    | PPO    | 4x30=120           |", 30),
    (4, True, "remax", "| 4    | True    | ReMax  | **4x40=160**       |", 40),
    (1, True, "ppo", "| 1    | True    | PPO    | 1x32=32            |", 32),
    (1, True, "remax", "| 1    | True    | ReMax  | **1x42=42**        |", 42),
]
REMAX_FOOTNOTES = ("*: Gradient checkpointing and ZeRO-2 are used for LLM.",
                   "*: ZeRO-3 and offload are used for the reward model and the reference model.")


def remax_records(g: Path) -> list[MeasuredPoint]:
    readme, sha = blob(g, REMAX_COMMIT, "README.md")
    script, script_sha = blob(g, REMAX_COMMIT, REMAX_SCRIPT)
    title = quote(readme, "Results of tuning Llama2-7B with A100-80GB GPUs")
    notes = [quote(readme, n) for n in REMAX_FOOTNOTES]
    args = dschat.read(script)  # the shipped ReMax script: what the table's runs share
    assert (args["max_prompt_seq_len"], args["max_answer_seq_len"]) == (256, 256)
    assert args["actor_zero_stage"] == "$ACTOR_ZERO_STAGE" and "ACTOR_ZERO_STAGE=2" in script
    assert "REWARD_ZERO_STAGE=3" in script and "REFERENCE_ZERO_STAGE=3" in script
    assert args["actor_bf16"] is True and args["actor_gradient_checkpointing"] is True
    assert args["enable_hybrid_engine"] is True and args["offload_reference_model"] is True
    out = []
    for gpus, offload, algo, row, batch in REMAX_ROWS:
        quote(readme, row)
        b = batch or 1
        request = EstimateRequest(
            model="meta-llama/Llama-2-7b-hf", algo=algo, gpus=f"{gpus}xA100-80GB", engine="deepspeed",
            zero_stage=2, ref_zero_stage=3, reward_zero_stage=3, offload_ref=True, offload_reward=True,
            offload="optimizer" if offload else "none", dtype="bf16", gradient_checkpointing=True,
            rollout_engine="hybrid-engine", micro_batch_size=b, rollout_batch_size=b, prompt_len=256, gen_len=256,
            reward="model", ref="separate", logprob_kernel="log-softmax")
        assumptions = [
            f"settings from the shipped script {REMAX_SCRIPT} (blob {script_sha[:12]}): Llama-2-7B SFT actor "
            "(llama2_7b_sft) and a Llama-2-7B reward model (llama2_7b_reward), --actor_bf16 --reward_bf16, "
            "--actor_gradient_checkpointing, --enable_hybrid_engine, prompt 256 + answer 256, actor ZeRO-2, "
            "reward and reference ZeRO-3 with --offload_reward_model --offload_reference_model (the table's "
            "footnotes say the same); the table's 'Offload' column is the script's --offload (DeepSpeedCPUAdam: "
            "Adam states and fp32 masters on the CPU): offload 'optimizer'",
            "memplan's dschat reader is not used: ReMax's fork names the frozen models' stages --reward_zero_stage "
            "and --reference_zero_stage, which the reader (DeepSpeed-Chat's names) does not read",
            "the table's batch is per GPU ('4x26' on 4 GPUs) and is taken as both "
            "--per_device_generation_batch_size and --per_device_training_batch_size (the script sets both, to 1)",
        ]
        if algo == "ppo":
            assumptions += [
                "PPO is not in ReMax's repository (main.py's --algo takes 'remax' only); the table's PPO ran on "
                "DeepSpeed-Chat's step-3 trainer with the same engine settings: a critic initialised from the "
                "Llama-2-7B reward model, trained at ZeRO-2 like the actor ('ZeRO-2 are used for LLM'), its "
                "gradient checkpointing as the actor's (memplan estimates both with the actor's)",
            ]
        if batch is None:
            assumptions.append("'❌ (OOM)' in a maximum-batch column: no batch ran; the record is the smallest, 1 "
                               "sequence per GPU")
        tag = f"{gpus}xA100-80GB-{'offload' if offload else 'no-offload'}-{algo}-b{b}"
        out.append(MeasuredPoint(
            id=f"remax-readme/{tag}/outcome", point=f"remax-readme/{tag}",
            source=Source(kind="public", url=REMAX_URL, commit=REMAX_COMMIT, path="README.md", sha=sha,
                          measured_at_commit=REMAX_COMMIT, locator=f"Memory Efficient table: {row.strip()}"),
            framework="remax-deepspeed-chat", framework_version=REMAX_COMMIT[:8],
            versions={"deepspeed": "0.10.3", "transformers": "4.31.0", "torch": "2.0.1"},
            settings={"gpus": gpus, "offload": offload, "method": algo, "per_device_batch": batch,
                      "actor_zero_stage": 2, "reward_zero_stage": 3, "reference_zero_stage": 3,
                      "offload_reward_model": True, "offload_reference_model": True, "bf16": True,
                      "actor_gradient_checkpointing": True, "enable_hybrid_engine": True,
                      "max_prompt_seq_len": 256, "max_answer_seq_len": 256},
            device=MeasuredDevice(name="A100-80GB", count=gpus, catalog_gpu="A100-80GB"),
            quantity="outcome", phases=PPO_PHASES if algo == "ppo" else REMAX_PHASES, source_phase="whole run",
            outcome="ran" if batch else "oom",
            raw={"table": title, "row": row, "script": REMAX_SCRIPT, "script_sha": script_sha},
            request=request, assumptions=assumptions,
            notes=notes + ["versions: the repository's environment.yml at the same commit (deepspeed 0.10.3, "
                           "transformers 4.31.0, pytorch 2.0.1/cu118); the README does not say the runs used it",
                           "'Maximum Batch Size': the largest that ran; whether one more OOMs is not stated, so "
                           "no OOM record is made for it",
                           "answers may stop before 256 tokens: remax_trainer.py's generate() sets max_length but no "
                           "min_length (DeepSpeed-Chat's sets both); the estimate at 256 is the upper bound"]))
    return out


# --- DeepSpeed-Chat README examples -----------------------------------------------------------------------------
DSCHAT_URL = "https://github.com/microsoft/DeepSpeedExamples"
DSCHAT_COMMIT = "e468799f19423d7a045c726ff89a53086bc379fa"  # 2023-04-11, "DeepSpeed Chat Release (#264)"
DSCHAT_DIR = "applications/DeepSpeed-Chat"
DSCHAT_STEP3 = f"{DSCHAT_DIR}/training/step3_rlhf_finetuning/training_scripts"
# main.py's names at the release, renamed in #698 (2023-08-17) to what memplan's reader takes; same meaning:
# the generation batch per device, the training micro batch per device, generation batches per PPO step.
RENAMED = {"per_device_train_batch_size": "per_device_generation_batch_size",
           "per_device_mini_train_batch_size": "per_device_training_batch_size",
           "generation_batch_numbers": "generation_batches"}
# (actor, train.py's --num-gpus → script folder, memplan cluster, the README's command, its timing row, its device
# sentence)
DSCHAT_RUNS = [
    ("facebook/opt-1.3b", "single_gpu", "1xA6000", "NVIDIA A6000",
     "python train.py --actor-model facebook/opt-1.3b --reward-model facebook/opt-350m --num-gpus 1",
     "| Actor: OPT-1.3B  Reward: OPT-350M | 2900 Sec | 670 Sec | 1.2hr | 2.2hr |",
     "on a single commodity NVIDIA A6000 GPU with 48GB memory"),
    ("facebook/opt-13b", "single_node", "8xA100-40GB", "NVIDIA A100-40G",
     "python train.py --actor-model facebook/opt-13b --reward-model facebook/opt-350m --num-gpus 8",
     "| Actor: OPT-13B Reward: OPT-350M | 2.5hr  | 0.25hr | 10.8hr | 13.6hr |",
     "on a single DGX node with 8 NVIDIA A100-40G GPUs"),
    ("facebook/opt-66b", "multi_node", "8x8xA100-80GB", "NVIDIA A100-80G",
     "python train.py --actor-model facebook/opt-66b --reward-model facebook/opt-350m --num-gpus 64",
     "| Actor: OPT-66B  Reward: OPT-350M | 82mins | 5mins  | 7.5hr  | 9hr   |",
     "on 8 DGX nodes with 8 NVIDIA A100-80G GPUs/node"),
]
DSCHAT_COUNT = {"single_gpu": 1, "single_node": 8, "multi_node": 64}
DSCHAT_DEFAULT_STAGE = {"single_gpu": "0", "single_node": "3", "multi_node": "3"}  # the scripts' own defaults


def dschat_records(g: Path) -> list[MeasuredPoint]:
    readme, sha = blob(g, DSCHAT_COMMIT, f"{DSCHAT_DIR}/README.md")
    train_py, _ = blob(g, DSCHAT_COMMIT, f"{DSCHAT_DIR}/train.py")
    quote(train_py, 'f"run_{model_size}.sh"')  # train.py runs training_scripts/<folder>/run_<size>.sh
    out = []
    for actor, folder, gpus, device, command, row, where in DSCHAT_RUNS:
        for line in (command, row, where):
            quote(readme, line)
        size = actor.removeprefix("facebook/opt-")
        path = f"{DSCHAT_STEP3}/{folder}/run_{size}.sh"
        script, script_sha = blob(g, DSCHAT_COMMIT, path)
        stage = DSCHAT_DEFAULT_STAGE[folder]
        quote(script, f"ACTOR_ZERO_STAGE={stage}")
        quote(script, f"CRITIC_ZERO_STAGE={stage}")
        text = (script.replace("$ACTOR_MODEL_PATH", actor).replace("$CRITIC_MODEL_PATH", "facebook/opt-350m")
                .replace("$ACTOR_ZERO_STAGE", stage).replace("$CRITIC_ZERO_STAGE", stage))
        args = {RENAMED.get(k, k): v for k, v in dschat.read(text).items()}
        run = dschat.fields(args, gpus)
        request = EstimateRequest(**run.fields)
        assumptions = [
            f"the step-3 command is {path} at the release commit (train.py --num-gpus {DSCHAT_COUNT[folder]} picks "
            f"training_scripts/{folder}/run_<size>.sh; no --actor-zero-stage given, so the script's default ZeRO "
            f"stage {stage} for actor and critic), read by memplan's dschat reader (memplan.frameworks.dschat) "
            "after renaming the release's " + ", ".join(f"--{a} → --{b}" for a, b in RENAMED.items())
            + " (#698, 2023-08-17: the same settings under new names)",
            "actor and critic paths: the step-1 actor (OPT base as named) and the step-2 reward model "
            "(facebook/opt-350m, which initialises critic and reward model)",
            "DeepSpeed-Chat's LoRA (--actor_lora_dim 128, no --only_optimize_lora): LinearLayer_LoRA freezes each "
            "adapted weight, the adapters train, and so do what is not adapted (embeddings, biases, layer norms); "
            "memplan trains the adapters only (lora_rank 128): the rest's gradients and Adam states are not counted",
            "the trainer modeled is DeepSpeed-Chat at 83757d9 (memplan's reader and estimator), not the release's",
        ] + [f"reader: {n}" for n in run.notes]
        tag = f"{size}-{gpus}"
        out.append(MeasuredPoint(
            id=f"dschat-readme/{tag}/outcome", point=f"dschat-readme/{tag}",
            source=Source(kind="public", url=DSCHAT_URL, commit=DSCHAT_COMMIT, path=f"{DSCHAT_DIR}/README.md",
                          sha=sha, measured_at_commit=DSCHAT_COMMIT, locator=f"E2E time table: {row}"),
            framework="deepspeed-chat", framework_version=DSCHAT_COMMIT[:8], versions={},
            settings={k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                      for k, v in sorted(args.items()) if k not in ("data_path", "output_dir")},
            device=MeasuredDevice(name=device, count=DSCHAT_COUNT[folder], catalog_gpu=gpus.rsplit("x", 1)[1]),
            quantity="outcome", phases=PPO_PHASES, source_phase="step 3 (whole run)", outcome="ran",
            raw={"command": command, "row": row, "device": where, "script": path, "script_sha": script_sha},
            request=request, assumptions=assumptions,
            notes=["the README times step 3 end to end: the run went through; its peak is not reported",
                   "versions not recorded (requirements.txt at the release pins neither torch nor DeepSpeed: "
                   "'git+https://github.com/microsoft/deepspeed.git')"]))
    return out


# --- torchtune README "Optimization flags" ----------------------------------------------------------------------
TORCHTUNE_URL = "https://github.com/pytorch/torchtune"
TORCHTUNE_COMMIT = "1814feb17a9038e1a8053ce93111bd26774a8db6"  # 2024-11-18, "add flags to readme (#2003)"
TORCHTUNE_ROW = ("| [+ Packed Dataset](https://pytorch.org/torchtune/main/basics/packing.html) | 60.0 | +135.16% | "
                 "7075 | +238.40% |")
TORCHTUNE_BASELINE = ("- **Model:** Llama 3.2 3B", "- **Batch size:** 2", "- **Max seq len:** 4096",
                      "- **Precision:** bf16", "- **Hardware:** A100", "- **Recipe:** full_finetune_single_device")


def torchtune_records(g: Path) -> list[MeasuredPoint]:
    readme, sha = blob(g, TORCHTUNE_COMMIT, "README.md")
    header = quote(readme, "| Technique | Peak Memory Active (GiB) |")
    baseline = [quote(readme, line) for line in TORCHTUNE_BASELINE]
    quote(readme, TORCHTUNE_ROW)
    recipe, _ = blob(g, TORCHTUNE_COMMIT, "recipes/full_finetune_single_device.py")
    quote(recipe, "training.get_memory_stats(device=self._device)")
    model, _ = blob(g, TORCHTUNE_COMMIT, "torchtune/modules/transformer.py")
    quote(model, "output = F.linear(h, self.tok_embeddings.weight).float()")  # tied head, fp32 logits
    measured = int(60.0 * GiB)
    request = EstimateRequest(
        model="meta-llama/Llama-3.2-3B-Instruct", algo="sft", gpus="1xA100-80GB", engine="torch", dtype="bf16",
        seq_len=4096, micro_batch_size=2, packing=True, gradient_checkpointing=False, optimizer="adamw",
        attention="sdpa", logprob_kernel="log-softmax")
    return [MeasuredPoint(
        id="torchtune-readme/llama3.2-3b-full-packed-b2-s4096/actor_update",
        point="torchtune-readme/llama3.2-3b-full-packed-b2-s4096",
        source=Source(kind="public", url=TORCHTUNE_URL, commit=TORCHTUNE_COMMIT, path="README.md", sha=sha,
                      measured_at_commit=TORCHTUNE_COMMIT, locator="Optimization flags table: + Packed Dataset"),
        framework="torchtune", framework_version="0.5.0", versions={"torchtune": "0.5.0"},
        settings={"recipe": "full_finetune_single_device", "model": "llama3_2_3b", "batch_size": 2,
                  "max_seq_len": 4096, "dtype": "bf16", "dataset.packed": True, "compile": False,
                  "loss": "torch.nn.CrossEntropyLoss", "enable_activation_checkpointing": False,
                  "optimizer_in_bwd": False, "enable_activation_offloading": False,
                  "optimizer": "torch.optim.AdamW", "gradient_accumulation_steps": 1},
        device=MeasuredDevice(name="A100", count=1, catalog_gpu="A100-80GB"),
        quantity="torch_max_allocated", phases=("actor_update",), source_phase="training (peak over the run)",
        measured_bytes=measured, outcome="ran",
        raw={"header": header, "row": TORCHTUNE_ROW, "baseline": "; ".join(baseline), "peak_active_gib": 60.0},
        request=request,
        assumptions=[
            "the table adds each technique on top of the previous one, so the '+ Packed Dataset' row runs the "
            "baseline with dataset.packed=True and without every later row: compile off, the plain cross-entropy "
            "(not CEWithChunkedOutputLoss), no activation checkpointing, optimizer_in_bwd off, no activation "
            "offloading, and a non-8-bit AdamW (torch.optim.AdamW, as the README's reproduce command names it; "
            "the config's own PagedAdamW8bit would be the '+ 8-bit AdamW' row)",
            "A100 taken as the 80 GB card: 60.0 GiB does not fit a 40 GB one",
            "model: the config's llama3_2_3b with the Llama-3.2-3B-Instruct checkpoint (tied embeddings); the "
            "catalog's meta-llama/Llama-3.2-3B-Instruct",
            "packed to 4096 tokens per row: 2 × 4096 tokens every step (packing=True); torchtune masks each "
            "document within a pack (flex attention where available): attention 'sdpa' (no s² scores)",
            "bf16 weights, gradients and AdamW states without fp32 masters (full_finetune_single_device: the "
            "model in bf16, torch AdamW on it): engine 'torch', master_weights default (False)",
            "logits: TransformerDecoder returns them in fp32 (.float()), the recipe takes cross-entropy over the "
            "whole [b·s, V] tensor: logprob_kernel 'log-softmax'",
        ],
        notes=["'Peak Memory Active' is torch.cuda.memory_stats()['active_bytes.all.peak'] "
               "(torchtune.training.get_memory_stats): bytes of blocks allocated or awaiting a stream's use — "
               "torch's allocated peak on one stream; compared as torch_max_allocated (net of fixed bytes)",
               "GiB as the README writes it; 60.0 is rounded to 0.1 GiB (±0.05 GiB)"])]


SOURCES = {"remax": (remax_records, MIRROR / "liziniu+ReMax/repo"),
           "dschat": (dschat_records, MIRROR / "microsoft+DeepSpeedExamples/repo"),
           "torchtune": (torchtune_records, MIRROR / "pytorch+torchtune/repo")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, (_, default) in SOURCES.items():
        ap.add_argument(f"--{name}", type=Path, default=default, help=f"bare git directory of the {name} source")
    ap.add_argument("--out-dir", type=Path, default=OUT)
    args = ap.parse_args(argv)
    for name, (build, _) in SOURCES.items():
        records = build(getattr(args, name))
        path = args.out_dir / f"public_{name}.jsonl"
        path.write_text("".join(r.model_dump_json(exclude_none=False) + "\n" for r in records))
        print(f"{len(records)} records -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
