"""``memplan.emit``: launch files that memplan's own readers read back to the same request, clear errors for what
a framework cannot carry, and the cluster resources with the report's numbers.

A request "reads back the same" when every field equals the read request's, except those the request left unset
(None) that the reader writes out: there the estimator's resolved run (``memplan.estimator.resolve``) must be
equal — an unset default and its value written out are one run.
"""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from memplan import estimate
from memplan.cli.app import app
from memplan.emit import emit
from memplan.emit.resources import SHM_BYTES
from memplan.errors import InputError
from memplan.estimator.resolve import resolve
from memplan.frameworks import openrlhf, trl, verl
from memplan.report import EstimateRequest
from memplan.units import GiB

FIELDS = EstimateRequest.model_fields
MODEL, SMALL = "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-1.5B"


def request(preset: str, **fields) -> EstimateRequest:
    """A request on the framework ``preset``'s defaults, ``fields`` on top (framework=None: no preset)."""
    return EstimateRequest(**{"model": MODEL, "algo": "grpo", "gpus": "8xH100-80GB", "framework": preset,
                              **fields})


def read_back(req: EstimateRequest, target: str) -> EstimateRequest:
    """The emitted files, read by memplan's reader of ``target`` (TRL: with the prompt length as --prompt-len)."""
    files = emit(req, target).files
    gpu = req.gpus.split("x")[-1]
    if target == "verl":
        fields = verl.fields(verl.read(files[0].text), gpu).fields
    elif target == "openrlhf":
        fields = openrlhf.fields(openrlhf.read(files[0].text), gpu).fields
    else:
        run = trl.fields(trl.read(files[0].text), trl.read_accelerate(files[1].text), gpu, req.algo,
                         frozenset({"prompt_len"}))
        fields = {**run.fields, "prompt_len": req.prompt_len}
    return EstimateRequest(**fields, host_ram_bytes_per_node=req.host_ram_bytes_per_node)


def explicit(**fields) -> EstimateRequest:
    """A request without a preset: every field as given, memplan's defaults for the rest."""
    return EstimateRequest(**{"model": MODEL, "algo": "grpo", "gpus": "8xH100-80GB", **fields})


def assert_same(req: EstimateRequest, back: EstimateRequest) -> None:
    differ = {name: (getattr(req, name), getattr(back, name)) for name in FIELDS
              if name != "framework" and getattr(req, name) != getattr(back, name)}
    # only a default on one side (unset, or written out by the preset or the reader), the same run either way
    assert all(None in pair for pair in differ.values()), differ
    assert resolve(req)._replace(notes=()) == resolve(back)._replace(notes=())


VERL = {
    "grpo preset": {},
    "ppo, reward model and critic": dict(algo="ppo", reward="model", reward_model=SMALL, critic_model=SMALL,
                                         micro_batch_size=2, rollout_batch_size=8, score_micro_batch_size=4),
    "rloo, LoRA, vLLM 0.6 one-way awake": dict(algo="rloo", group_size=4, lora_rank=32, ref="lora-shared",
                                                offload_ref=False, vllm_gpu_memory_utilization=0.6,
                                                vllm_tensor_parallel_size=1, vllm_sleep_mode=False, entropy="none"),
    "remax, 2 nodes, hybrid ZeRO-2, idle offload": dict(algo="remax", gpus="2x8xH100-80GB", zero_stage=2,
                                                          hybrid_shard=True, idle_offload="params+optimizer"),
    "grpo, FSDP2, full offload, bf16 masters": dict(fsdp_version=2,  # offload_policy: FSDP2's only (verl)
                                             offload="optimizer+params", idle_offload="none", master_weights=False,
                                             micro_batch_size=4, rollout_batch_size=2, group_size=16),
    "grpo, packed, token caps, Ulysses 2": dict(packing=True, max_tokens_per_gpu=8192, score_max_tokens_per_gpu=16384,
                                               sequence_parallel=2, group_size=8, rollout_batch_size=4),
    "grpo, FSDP1, KL loss": dict(fsdp_version=1, ref="separate", offload_ref=True, gen_len=1024, prompt_len=512),
}


@pytest.mark.parametrize("fields", VERL.values(), ids=VERL)
def test_verl_round_trip(fields):
    req = request("verl", **fields)
    assert_same(req, read_back(req, "verl"))


def test_verl_hf_generate_without_preset():
    """HF generation (the preset fills vLLM's settings, which a request generating with HF may not hold): verl's
    facts written out — FSDP2 full shard, flash-attn's fused log-probs, packed sequences, the old log-probs'
    entropy (verl's reader, memplan.frameworks.verl)."""
    req = explicit(engine="fsdp", zero_stage=3, logprob_kernel="fused", packing=True, entropy="scoring",
                   rollout_engine="hf", gradient_checkpointing=True, ref="none", reward="rule", group_size=4,
                   micro_batch_size=2, rollout_batch_size=1, prompt_len=512, gen_len=512)
    assert_same(req, read_back(req, "verl"))


def test_verl_script_names():
    """The script's numbers, worked by hand: 16 prompts per GPU × 8 GPUs = data.train_batch_size 128."""
    text = emit(request("verl", rollout_batch_size=16, micro_batch_size=4, group_size=8), "verl").files[0].text
    assert text.splitlines()[6] == "python3 -m verl.trainer.main_ppo \\"
    for line in ("algorithm.adv_estimator=grpo", "data.train_batch_size=128", "actor_rollout_ref.rollout.n=8",
                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "actor_rollout_ref.actor.strategy=fsdp",  # verl's default: FSDP1
                 "trainer.nnodes=1", "trainer.n_gpus_per_node=8", "actor_rollout_ref.rollout.name=vllm"):
        assert f"    {line} \\" in text


TRL = {
    "grpo preset": {},
    "grpo, ZeRO-3, colocated vLLM asleep": dict(engine="deepspeed", zero_stage=3, ref_zero_stage=3,
                                                rollout_engine="vllm", vllm_gpu_memory_utilization=0.4,
                                                vllm_sleep_mode=True, vllm_tensor_parallel_size=2,
                                                micro_batch_size=4, rollout_batch_size=2, lora_rank=0,
                                                ref="separate", master_weights=None),
    "rloo, QLoRA, DDP": dict(algo="rloo", group_size=4, engine="torch", lora_rank=16, quantize_base="int4",
                             ref="lora-shared", micro_batch_size=2, rollout_batch_size=1),
    "grpo, FSDP2 ZeRO-2, full offload, bf16 masters": dict(engine="fsdp", zero_stage=2, offload="optimizer+params",
                                                           master_weights=False, lora_rank=0, ref="none"),
    "grpo, FSDP1 hybrid, 2 nodes, vLLM server": dict(engine="fsdp", fsdp_version=1, zero_stage=3, hybrid_shard=True,
                                                   gpus="2x8xH100-80GB", lora_rank=0, rollout_engine="remote"),
    "dpo, ZeRO-2, separate reference": dict(algo="dpo", engine="deepspeed", zero_stage=2, ref_zero_stage=0,
                                            lora_rank=0, ref="separate", seq_len=2048, micro_batch_size=2),
    "sft, packed": dict(algo="sft", seq_len=4096, packing=True, micro_batch_size=4),
    "dpo, LoRA, the adapter off as reference": dict(algo="dpo", lora_rank=32, ref="lora-shared", seq_len=1024),
    "dpo, precomputed reference log-probs": dict(algo="dpo", engine="deepspeed", zero_stage=3, lora_rank=0,
                                                 ref="none", seq_len=1024),
}


@pytest.mark.parametrize("fields", TRL.values(), ids=TRL)
def test_trl_round_trip(fields):
    req = request("trl", **fields)
    assert_same(req, read_back(req, "trl"))


def test_trl_files_parse():
    """Two YAML mappings; GRPO's generation batch worked by hand: 4 prompts × 8 completions = 32 completions per
    GPU = per_device_train_batch_size 8 × steps_per_generation 4."""
    files = emit(request("trl", micro_batch_size=8, rollout_batch_size=4, group_size=8), "trl").files
    recipe, acc = (yaml.safe_load(f.text) for f in files)
    assert [f.name for f in files] == ["recipe.yaml", "accelerate.yaml"]
    assert (recipe["per_device_train_batch_size"], recipe["steps_per_generation"],
            recipe["num_generations"]) == (8, 4, 8)
    assert acc["num_processes"] == 8 and acc["num_machines"] == 1
    assert "max_prompt_length" not in recipe  # removed in TRL 0.28: the prompt length is the data's


OPENRLHF = {
    "grpo, colocated vLLM": dict(group_size=8, placement="colocated"),
    "grpo, packed, ring attention 4, head stride 2": dict(group_size=8, placement="colocated", packing=True,
                                                         sequence_parallel=4, sequence_parallel_mode="ring",
                                                         ring_head_stride=2, model="meta-llama/Llama-3.1-8B"),
    # processes per GPU under colocate_all: actor, critic, reference, reward model and a vLLM worker = 5
    "ppo, reward model, ZeRO-3, offloads, sleep": dict(algo="ppo", reward="model", reward_model=SMALL,
                                                       placement="colocated", zero_stage=3, ref_zero_stage=3,
                                                       reward_zero_stage=3, offload_ref=True, offload_reward=True,
                                                       offload="optimizer", rollout_engine="vllm",
                                                       vllm_sleep_mode=True, vllm_gpu_memory_utilization=0.5,
                                                       processes_per_gpu=5),
    "grpo, DeepSpeed sleep, packed, token caps": dict(group_size=8, placement="colocated", rollout_engine="vllm",
                                                      processes_per_gpu=3, idle_offload="optimizer", zero_stage=3,
                                                      ref_zero_stage=3, packing=True, max_tokens_per_gpu=16384,
                                                      score_max_tokens_per_gpu=32768),
    "rloo, QLoRA, eager, HF generate": dict(algo="rloo", group_size=4, placement="colocated", lora_rank=16,
                                           quantize_base="int4", attention="eager", rollout_engine="hf",
                                           ref="separate", micro_batch_size=2, rollout_batch_size=2,
                                           score_micro_batch_size=4),
}


@pytest.mark.parametrize("fields", OPENRLHF.values(), ids=OPENRLHF)
def test_openrlhf_round_trip(fields):
    req = request("openrlhf", **fields)
    assert_same(req, read_back(req, "openrlhf"))


def test_openrlhf_split_over_two_nodes():
    """Each pair on its own 8 GPUs (colocate_actor_ref, colocate_critic_reward), vLLM on GPUs of its own: 2 groups
    × 8 GPUs = 2x8. OpenRLHF's facts written out (memplan.frameworks.openrlhf): frozen models at ZeRO stage 0
    below ZeRO-3 (get_ds_eval_config), fp32 logits for flash-attn's cross-entropy."""
    req = explicit(algo="ppo", reward="model", gpus="2x8xH100-80GB", placement="split",
                   split_groups=(("actor", "reference"), ("critic", "reward")), rollout_engine="remote",
                   engine="deepspeed", zero_stage=2, ref_zero_stage=0, reward_zero_stage=0, ref="separate",
                   attention="flash", logprob_kernel="fp32-fused", micro_batch_size=2, rollout_batch_size=4,
                   score_micro_batch_size=4, prompt_len=1024, gen_len=1024)
    assert_same(req, read_back(req, "openrlhf"))


def test_openrlhf_counts():
    """Worked by hand: colocated on 8 GPUs with vLLM TP 1 → 8 engines (num_engines × TP = the actor's GPUs, as
    train_ppo_ray asserts); 2 prompts per GPU × 8 GPUs = rollout.batch_size 16; × 8 samples = train.batch_size 128."""
    # processes per GPU under colocate_all: the actor, the reference (algo.kl.init_coef 0.01) and a vLLM worker = 3
    words = emit(request("openrlhf", group_size=8, placement="colocated", rollout_engine="vllm", processes_per_gpu=3,
                         rollout_batch_size=2, micro_batch_size=4), "openrlhf").files[0].text.split()
    after = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    assert (after["--vllm.num_engines"], after["--rollout.batch_size"],
            after["--train.batch_size"]) == ("8", "16", "128")
    assert "--train.colocate_all" in words


@pytest.mark.parametrize(("target", "fields", "field"), [
    ("verl", dict(framework=None, engine="deepspeed", rollout_engine="vllm"), "engine"),
    ("verl", dict(framework=None, algo="dpo"), "algo"),
    ("verl", dict(lora_rank=16, lora_targets="attention", ref="lora-shared", offload_ref=False), "lora_targets"),
    ("verl", dict(tp=2), "tp"),
    ("verl", dict(micro_batch_size=3, rollout_batch_size=1), "micro_batch_size"),  # 1 × 8 completions, not × 3
    ("verl", dict(model={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "intermediate_size": 128, "vocab_size": 1000}), "model"),
    ("trl", dict(framework=None, algo="ppo"), "algo"),
    ("trl", dict(engine="deepspeed", zero_stage=3, master_weights=False, lora_rank=0), "master_weights"),
    ("trl", dict(processes_per_gpu=2), "processes_per_gpu"),
    ("openrlhf", dict(framework=None, algo="remax"), "algo"),
    ("openrlhf", dict(group_size=8, placement="colocated", offload="optimizer+params", zero_stage=3), "offload"),
    ("openrlhf", dict(group_size=8, placement="colocated", dtype="fp32"), "dtype"),
])
def test_what_a_framework_cannot_carry(target, fields, field):
    with pytest.raises(InputError) as err:
        emit(request(target, **fields), target)
    assert err.value.field == field
    framework = {"verl": "verl", "trl": "TRL", "openrlhf": "OpenRLHF"}[target]
    assert framework in str(err.value) or field in ("algo", "model", "micro_batch_size")


# Llama-2-7b SFT, ZeRO-3 with the optimizer offloaded, one node of 8 × A100-80GB: ZeRO-Offload keeps the fp32
# master, both Adam moments and the fp32 gradient on the CPU, 16 bytes per parameter (Ren et al. 2021, §4):
# 16 × 6,738,415,616 (transformers' count) = 107,814,649,856 bytes per node; with /dev/shm's 1 GiB:
# 107,814,649,856 + 1,073,741,824 = 108,888,391,680 B = 101.41 GiB → 102 GiB asked.
OFFLOAD = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="sft", gpus="8xA100-80GB", engine="deepspeed",
                          zero_stage=3, offload="optimizer")
HOST = 16 * 6_738_415_616


def test_offload_report_holds_the_hand_count():
    assert estimate(OFFLOAD).host_bytes_per_node == HOST == 107_814_649_856


def test_ray_placement_group():
    group = json.loads(emit(OFFLOAD, "ray").files[0].text)
    assert group["strategy"] == "STRICT_PACK"  # one node
    assert group["bundles"] == [{"GPU": 1, "CPU": 1, "memory": HOST // 8}] * 8  # 13,476,831,232 B per GPU
    two = json.loads(emit(OFFLOAD.model_copy(update={"gpus": "2x8xA100-80GB"}), "ray").files[0].text)
    assert two["strategy"] == "PACK" and len(two["bundles"]) == 16


def test_skypilot_resources():
    spec = yaml.safe_load(emit(OFFLOAD, "skypilot").files[0].text)
    assert spec == {"num_nodes": 1, "resources": {"accelerators": "A100-80GB:8", "memory": "102+"}}
    with pytest.raises(InputError) as err:
        emit(OFFLOAD.model_copy(update={"gpus": "8xH20-96GB"}), "skypilot")
    assert err.value.field == "gpus"


def test_kuberay_worker_group():
    (group,) = yaml.safe_load(emit(OFFLOAD.model_copy(update={"gpus": "2x8xA100-80GB"}), "kuberay").files[0].text)
    assert group["replicas"] == 2
    container = group["template"]["spec"]["containers"][0]
    # ZeRO-3 over 16 GPUs: 16 B × P ÷ 16 GPUs per GPU, × 8 per node = 53,907,324,928 B; + 1 GiB = 51.2 GiB → 52
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8, "memory": "52Gi"}
    assert group["template"]["spec"]["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}


def test_no_host_ram_counted():
    """Nothing offloaded: the ask is /dev/shm alone, and the bundles carry no memory."""
    req = EstimateRequest(model="Qwen/Qwen2.5-0.5B", algo="sft", gpus="1xA100-80GB")
    assert estimate(req).host_bytes_per_node == 0
    assert yaml.safe_load(emit(req, "skypilot").files[0].text)["resources"]["memory"] == f"{SHM_BYTES // GiB}+"
    assert json.loads(emit(req, "ray").files[0].text)["bundles"] == [{"GPU": 1, "CPU": 1}]


runner = CliRunner()
BASE = ["--model", MODEL, "--algo", "grpo", "--gpus", "8xH100-80GB", "--framework", "verl"]


def test_cli_plan_row_to_file_reads_back(tmp_path):
    out = tmp_path / "run_verl.sh"
    result = runner.invoke(app, ["plan", *BASE, "--allow", "micro_batch_size", "--emit", "verl", "--row", "1",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    back = runner.invoke(app, ["estimate", "--verl", str(out), "--gpus", "H100-80GB", "--json"])
    assert back.exit_code == 0, back.output


def test_cli_estimate_trl_to_stdout_and_folder(tmp_path):
    args = ["estimate", "--model", MODEL, "--algo", "grpo", "--gpus", "8xH100-80GB", "--framework", "trl"]
    result = runner.invoke(app, [*args, "--emit", "trl"])
    assert result.exit_code == 0, result.output
    assert "# ==> recipe.yaml <==" in result.stdout and "# ==> accelerate.yaml <==" in result.stdout
    result = runner.invoke(app, [*args, "--emit", "trl", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["accelerate.yaml", "recipe.yaml"]


@pytest.mark.parametrize(("extra", "word"), [
    (["--row", "1"], "--row"), (["--emit", "slurm"], "--emit"), (["--emit", "verl", "--row", "1000"], "--row"),
])
def test_cli_bad_emit_options(extra, word):
    result = runner.invoke(app, ["plan", *BASE, "--max-results", "2", *extra])
    assert result.exit_code == 2
    assert word in result.output


def test_api_emit():
    from api.main import app as api

    client = TestClient(api)
    body = {"request": {"model": MODEL, "algo": "grpo", "gpus": "8xH100-80GB", "framework": "openrlhf",
                        "group_size": 8, "placement": "colocated"}, "target": "openrlhf"}
    answer = client.post("/v1/emit", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["files"][0]["name"] == "run_openrlhf.sh"
    bad = client.post("/v1/emit", json={**body, "target": "slurm"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "target"
    cannot = client.post("/v1/emit", json={**body, "request": {**body["request"], "algo": "remax"}})
    assert cannot.status_code == 422 and cannot.json()["detail"][0]["loc"] == ["body", "request", "algo"]
