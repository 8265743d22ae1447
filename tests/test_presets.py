"""Framework presets (``framework`` / ``--framework``) and the sharding default without one (``auto_zero_stage``).

A preset is what the framework's reader makes of a minimal launch file naming the model, algorithm and GPUs
(memplan.frameworks.presets): each framework's test reads such a file from tests/data with the reader and
compares the whole request.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
import memplan.catalog
from api.main import app
from memplan.cli.app import app as cli
from memplan.frameworks import dschat, openrlhf, presets, trl, verl
from memplan.planner import min_gpus
from memplan.report import EstimateRequest, auto_zero_stage, on_cluster

DATA = Path(__file__).parent / "data"
QWEN, LLAMA = "Qwen/Qwen2.5-7B", "meta-llama/Llama-2-7b-hf"


def same(preset: EstimateRequest, read: EstimateRequest, *, gpus_as_written: bool = True) -> None:
    """Every field equal but ``framework`` (the reader's request names none); ``gpus_as_written=False``: the
    same GPUs, written another way ('8xH100-80GB', '2x4xH100-80GB')."""
    skip = {"framework"} if gpus_as_written else {"framework", "gpus"}
    assert preset.model_dump(exclude=skip) == read.model_dump(exclude=skip)
    assert memplan.catalog.parse_cluster(preset.gpus).num_gpus == memplan.catalog.parse_cluster(read.gpus).num_gpus


# ---- each preset is its reader's request from a minimal launch file -------------------------------------------


def test_verl_preset_is_the_readers_minimal_script():
    read = verl.load(DATA / "verl_minimal.sh", "H100-80GB")
    same(EstimateRequest(framework="verl", model=QWEN, algo="grpo", gpus="8xH100-80GB"),
         EstimateRequest(**read.fields))


def test_trl_preset_is_the_readers_minimal_recipe():
    read = trl.load(DATA / "trl_minimal.yaml", DATA / "accelerate_multi_gpu.yaml", "H100-80GB", "grpo")
    same(EstimateRequest(framework="trl", model=QWEN, gpus="8xH100-80GB"), EstimateRequest(**read.fields))


def test_openrlhf_preset_is_the_readers_minimal_command():
    read = openrlhf.load(DATA / "openrlhf_minimal.sh", "H100-80GB")  # the reader writes its 2 × 4 GPUs
    same(EstimateRequest(framework="openrlhf", model=QWEN, algo="grpo", gpus="8xH100-80GB"),  # as 2x4xH100-80GB
         EstimateRequest(**read.fields), gpus_as_written=False)


def test_deepspeed_chat_preset_is_the_readers_minimal_command():
    read = dschat.load(DATA / "dschat_minimal.sh", "8xA100-40GB")
    same(EstimateRequest(framework="deepspeed-chat", model=LLAMA, gpus="8xA100-40GB"),
         EstimateRequest(**read.fields))


@pytest.mark.parametrize(("framework", "algo", "gpus"), [
    ("verl", "ppo", "8xH100-80GB"), ("verl", "rloo", "2x8xH100-80GB"), ("verl", "remax", "1xA100-80GB"),
    ("trl", "rloo", "8xH100-80GB"), ("trl", "dpo", "1xA100-80GB"), ("trl", "sft", "2x8xH100-80GB"),
    ("openrlhf", "ppo", "6xH100-80GB"), ("openrlhf", "rloo", "8xH100-80GB"),
    ("deepspeed-chat", "remax", "8xA100-40GB"),
])
def test_preset_is_the_readers_launch_file_written_by_presets(framework, algo, gpus):
    # the file presets.launch_file writes, read back by the reader (memplan.frameworks.presets.read_launch):
    # the same request as the preset's, every field
    files = presets.launch_file(framework, algo, gpus, model=QWEN)
    fields, _notes = presets.read_launch(framework, files, gpus, algo)
    if framework == "openrlhf" and fields.get("placement") == "split":  # each model its own GPUs: the actor's
        fields = presets._split_openrlhf(algo, fields, gpus, None, QWEN)[0]  # share of the cluster
    fields["gpus"] = gpus
    same(EstimateRequest(framework=framework, model=QWEN, algo=algo, gpus=gpus), EstimateRequest(**fields))


# ---- the verl GRPO example gives what verl's defaults imply -----------------------------------------------------


def test_verl_grpo_preset_has_verls_defaults():
    # verl/trainer/config/_generated_ppo_trainer.yaml (volcengine/verl @b178a3c, 2026-01-29; the same values in
    # verl 0.9.1, memplan.frameworks.verl.DEFAULTS), key by key (A = actor_rollout_ref):
    r = EstimateRequest(framework="verl", model=QWEN, algo="grpo", gpus="8xH100-80GB")
    assert r.engine == "fsdp"  # A.actor.strategy: fsdp
    assert r.zero_stage == 3  # A.actor.fsdp_config.reshard_after_forward: true (FULL_SHARD)
    assert r.offload == "none" and r.idle_offload == "none"  # fsdp_config.offload_policy / param_offload /
    # optimizer_offload: false
    assert r.dtype == "bf16" and r.master_weights is None  # fsdp_config.dtype: bfloat16, model_dtype: fp32
    # (fp32 masters: the request's default for engine fsdp)
    assert r.gradient_checkpointing is True  # A.model.enable_gradient_checkpointing: true
    assert r.lora_rank == 0  # A.model.lora_rank: 0
    assert r.ref == "none"  # A.actor.use_kl_loss: false, algorithm.use_kl_in_reward: false: no reference worker
    assert r.reward == "rule"  # reward_model.enable: false
    assert r.rollout_engine == "vllm"  # A.rollout.name (required '???'; vllm in the minimal script)
    assert r.vllm_gpu_memory_utilization == 0.5  # A.rollout.gpu_memory_utilization: 0.5
    assert r.vllm_tensor_parallel_size == 2  # A.rollout.tensor_model_parallel_size: 2
    assert r.vllm_sleep_mode is True  # A.rollout.free_cache_engine: true
    assert r.vllm_max_num_batched_tokens == 8192  # A.rollout.max_num_batched_tokens: 8192
    assert r.weight_sync_bucket_mb == 2048  # A.rollout.checkpoint_engine.update_weights_bucket_megabytes: 2048
    assert r.processes_per_gpu == 2  # A.rollout.mode: async — the vLLM worker beside the FSDP worker
    assert (r.prompt_len, r.gen_len) == (512, 512)  # data.max_prompt_length, data.max_response_length: 512
    assert r.rollout_batch_size == 1024 // 8  # data.train_batch_size: 1024 prompts over 8 GPUs
    assert r.group_size == 1  # A.rollout.n: 1 (a GRPO run sets it: --group-size)
    assert r.micro_batch_size == 1  # A.actor.ppo_micro_batch_size_per_gpu: null — required; the request's 1
    assert r.logprob_kernel == "fused"  # verl.utils.torch_functional.logprobs_from_logits: flash-attn's CE
    report = memplan.estimate(r)
    assert report.request == r
    note = next(n for n in report.notes if n.startswith("framework verl:"))
    assert "engine=fsdp" in note and "vllm_gpu_memory_utilization=0.5" in note


# ---- the fields given win ---------------------------------------------------------------------------------------


def test_given_fields_override_the_preset():
    base = EstimateRequest(framework="verl", model=QWEN, algo="grpo", gpus="8xH100-80GB")
    r = EstimateRequest(framework="verl", model=QWEN, algo="grpo", gpus="8xH100-80GB", zero_stage=2,
                        vllm_gpu_memory_utilization=0.7, micro_batch_size=4, group_size=8)
    assert (r.zero_stage, r.vllm_gpu_memory_utilization, r.micro_batch_size, r.group_size) == (2, 0.7, 4, 8)
    assert r.model_dump(exclude={"zero_stage", "vllm_gpu_memory_utilization", "micro_batch_size",
                                 "group_size"}) == base.model_dump(exclude={"zero_stage", "vllm_gpu_memory_utilization",
                                                                            "micro_batch_size", "group_size"})


def test_a_given_knob_goes_through_the_reader():
    # OpenRLHF's frozen models run at stage 3 only under ZeRO-3 (get_ds_eval_config): --zero-stage 3 moves them
    r = EstimateRequest(framework="openrlhf", model=QWEN, algo="grpo", gpus="8xH100-80GB")
    assert (r.zero_stage, r.ref_zero_stage) == (2, 0)  # ds.zero_stage: 2 (train_ppo_ray's default)
    r = EstimateRequest(framework="openrlhf", model=QWEN, algo="grpo", gpus="8xH100-80GB", zero_stage=3)
    assert (r.zero_stage, r.ref_zero_stage) == (3, 3)
    # TRL's LoRA: peft's default targets (lora_target_modules None: q_proj, v_proj) — TrlRun reads them
    r = EstimateRequest(framework="trl", model=QWEN, gpus="8xH100-80GB", lora_rank=16)
    assert (r.lora_rank, r.lora_targets) == (16, "attention")
    # OpenRLHF's --train.colocate_all: every model on every GPU, a Ray actor (process) each
    r = EstimateRequest(framework="openrlhf", model=QWEN, algo="grpo", gpus="8xH100-80GB", placement="colocated")
    assert (r.placement, r.processes_per_gpu, r.rollout_batch_size) == ("colocated", 2, 1024 // 8)


def test_the_preset_survives_revalidation():
    r = EstimateRequest(framework="trl", model=QWEN, gpus="8xH100-80GB", micro_batch_size=4)
    assert EstimateRequest.model_validate(r.model_dump()) == r
    assert EstimateRequest.model_validate_json(r.model_dump_json()) == r


# ---- bad input names the field -----------------------------------------------------------------------------------


def test_bad_framework_exit_2_and_422():
    result = CliRunner().invoke(cli, ["estimate", "--framework", "megatron", "--model", QWEN])
    assert result.exit_code == 2 and "framework" in result.output
    response = TestClient(app).post("/v1/estimate", json={"model": QWEN, "framework": "megatron"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "framework"


@pytest.mark.parametrize(("framework", "algo"), [("verl", "dpo"), ("trl", "ppo"), ("openrlhf", "remax"),
                                                 ("deepspeed-chat", "grpo")])
def test_an_algorithm_the_reader_does_not_read_names_algo(framework, algo):
    response = TestClient(app).post("/v1/estimate", json={"model": QWEN, "algo": algo, "framework": framework,
                                                          "gpus": "8xH100-80GB"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "algo"


def test_openrlhf_split_placement_needs_whole_groups():
    # PPO: actor, critic, reference on GPUs of their own, as many each: 8 GPUs do not split in 3
    response = TestClient(app).post("/v1/estimate", json={"model": QWEN, "framework": "openrlhf",
                                                          "gpus": "8xH100-80GB"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "gpus"


# ---- the CLI and the API take it --------------------------------------------------------------------------------


def test_cli_framework_equals_the_readers_file():
    args = ["estimate", "--json", "--gpus"]
    preset = CliRunner().invoke(cli, [*args, "8xH100-80GB", "--framework", "verl", "--model", QWEN, "--algo", "grpo"])
    read = CliRunner().invoke(cli, [*args, "H100-80GB", "--verl", str(DATA / "verl_minimal.sh")])
    assert preset.exit_code == 0 and read.exit_code == 0, (preset.output, read.output)
    a, b = json.loads(preset.stdout), json.loads(read.stdout)
    assert a["peak_bytes_per_gpu"] == b["peak_bytes_per_gpu"] and a["request"]["framework"] == "verl"


def test_api_request_with_framework():
    body = {"model": QWEN, "algo": "grpo", "gpus": "8xH100-80GB", "framework": "verl"}
    response = TestClient(app).post("/v1/estimate", json=body)
    assert response.status_code == 200
    report = response.json()
    assert report["request"]["engine"] == "fsdp" and report["request"]["rollout_engine"] == "vllm"
    assert report["peak_bytes_per_gpu"] == memplan.estimate(EstimateRequest(**body)).peak_bytes_per_gpu


# ---- without a framework: the sharding default follows the run -----------------------------------------------


@pytest.mark.parametrize(("kwargs", "stage"), [
    (dict(gpus="8xA100-80GB"), 3),  # a full fine-tune over 8 data-parallel GPUs: ZeRO-3
    (dict(gpus="8xA100-80GB", engine="fsdp"), 3),  # FSDP FULL_SHARD
    (dict(gpus="1xA100-80GB"), 0),  # nothing to shard over
    (dict(gpus="8xA100-80GB", tp=8), 0),  # one data-parallel rank
    (dict(gpus="8xA100-80GB", lora_rank=16), 0),  # LoRA: the frozen base replicated (peft under DDP)
    (dict(gpus="8xA100-80GB", engine="torch"), 0),  # plain PyTorch does not shard
    (dict(gpus="1xA100-80GB", offload="optimizer"), 3),  # DeepSpeed offloads from a ZeRO stage only
    (dict(gpus="8xA100-80GB", zero_stage=1), 1),  # given: kept
])
def test_auto_zero_stage(kwargs, stage):
    r = EstimateRequest(model=LLAMA, **kwargs)
    assert r.zero_stage == stage
    assert ("zero_stage" in r.model_fields_set) == ("zero_stage" in kwargs)  # unset stays unset
    assert auto_zero_stage(r) == (stage if "zero_stage" not in kwargs else 3)


def test_unset_zero_stage_follows_the_gpu_count():
    one = EstimateRequest(model=LLAMA, gpus="1xA100-80GB")
    assert on_cluster(one, "8xA100-80GB").zero_stage == 3
    assert "zero_stage" not in on_cluster(one, "8xA100-80GB").model_fields_set
    eight = EstimateRequest(model=LLAMA, gpus="8xA100-80GB")  # never down: a later offload needs the stage
    assert on_cluster(eight, "1xA100-80GB").zero_stage == 3
    pinned = EstimateRequest(model=LLAMA, gpus="1xA100-80GB", zero_stage=0)
    assert on_cluster(pinned, "8xA100-80GB").zero_stage == 0
    # 70B PPO: unsharded replicas never fit (tests/test_planner.py pins zero_stage=0 for that); the auto default
    # shards as the GPUs grow, and the fewest GPUs is found
    assert min_gpus(EstimateRequest(model="meta-llama/Llama-2-70b-hf", algo="ppo", gpus="1xA100-80GB")) is not None


def test_default_multi_gpu_full_fine_tune_fits_where_replicas_did_not():
    # the complaint: PPO 7B on 8×A100-40GB with memplan's defaults (README's deciding terms: ~277 GiB
    # per GPU of unsharded replicas at zero_stage 0); the auto default shards it
    auto = memplan.estimate(model=LLAMA, algo="ppo", gpus="8xA100-40GB")
    replicas = memplan.estimate(model=LLAMA, algo="ppo", gpus="8xA100-40GB", zero_stage=0)
    assert auto.request.zero_stage == 3 and auto.gpu_fits and not replicas.gpu_fits


def test_dschat_reader_on_the_shipped_llama2_script():
    # DeepSpeed-Chat's training_scripts/llama2/run_llama2_7b.sh (DeepSpeedExamples @83757d9), its variables at
    # the script's defaults (ACTOR_ZERO_STAGE=3, CRITIC_ZERO_STAGE=3; paths: the actor and a Llama critic)
    script = ("deepspeed main.py --actor_model_name_or_path meta-llama/Llama-2-7b-hf --critic_model_name_or_path "
              "meta-llama/Llama-2-7b-hf --per_device_generation_batch_size 1 --per_device_training_batch_size 1 "
              "--max_answer_seq_len 256 --max_prompt_seq_len 256 --actor_gradient_checkpointing "
              "--critic_gradient_checkpointing --offload_reference_model --actor_zero_stage 3 --critic_zero_stage 3 "
              "--enable_hybrid_engine --deepspeed --seed 1234")
    f = dschat.load(script, "8xA100-80GB").fields
    assert (f["zero_stage"], "critic_zero_stage" in f) == (3, False)  # both 3: one field
    # rlhf_engine._init_ref / _init_reward: stage 3 when the actor / critic is; the reference's offload applies
    assert (f["ref_zero_stage"], f["reward_zero_stage"], f["offload_ref"], "offload_reward" in f) == (3, 3, True, False)
    assert (f["gradient_checkpointing"], f["rollout_engine"], f["dtype"]) == (True, "hybrid-engine", "fp16")
    assert (f["rollout_batch_size"], f["micro_batch_size"], f["prompt_len"], f["gen_len"]) == (1, 1, 256, 256)
    memplan.estimate(**f)  # a valid request


# ---- compare under a preset: the default list cut to the framework's algorithms -------------------------------


@pytest.mark.parametrize(("framework", "compared", "left", "gpus"), [
    ("verl", ["ppo", "grpo", "remax", "rloo"], "dpo", "8xH100-80GB"),  # presets.ALGOS['verl']: no DPO trainer
    ("trl", ["grpo", "rloo", "dpo"], "ppo, remax", "8xH100-80GB"),  # TRL's trainers: GRPO, RLOO, DPO, SFT
    # OpenRLHF's default split placement: 3 model groups under PPO (actor, critic, reference), 2 under GRPO/RLOO
    ("openrlhf", ["ppo", "grpo", "rloo"], "remax, dpo", "6xH100-80GB"),
    ("deepspeed-chat", ["ppo", "remax"], "grpo, rloo, dpo", "8xH100-80GB"),
])
def test_compare_defaults_to_the_frameworks_algorithms(framework, compared, left, gpus):
    runner = CliRunner()
    args = ["compare", "--framework", framework, "--model", QWEN, "--gpus", gpus, "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [r["request"]["algo"] for r in json.loads(result.stdout)] == compared
    assert f"({left} left out of the default list)" in result.stderr
    table = runner.invoke(cli, args[:-1])
    assert table.exit_code == 0, table.output
    body = TestClient(app).post("/v1/compare", json={"base": {"model": QWEN, "gpus": gpus, "framework": framework}})
    assert body.status_code == 200, body.text
    assert [r["request"]["algo"] for r in body.json()] == compared
    assert all(any("left out of the default list" in n for n in r["notes"]) for r in body.json())
    if framework == "trl":  # no PPO to compare speed against
        assert all(r["speed_vs_ppo"] is None for r in body.json())


def test_compare_refuses_an_algorithm_the_framework_does_not_run():
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", "--framework", "verl", "--model", QWEN, "--gpus", "8xH100-80GB",
                                 "--algos", "ppo,dpo"])
    assert result.exit_code == 2 and "--algos" in result.stderr and "'dpo'" in result.stderr
    body = TestClient(app).post("/v1/compare", json={"base": {"model": QWEN, "gpus": "8xH100-80GB",
                                                              "framework": "verl"}, "algos": ["ppo", "dpo"]})
    assert body.status_code == 422 and body.json()["detail"][0]["loc"] == ["body", "algos"]
    plain = runner.invoke(cli, ["compare", "--model", QWEN, "--gpus", "8xH100-80GB", "--json"])  # no framework:
    assert [r["request"]["algo"] for r in json.loads(plain.stdout)] == ["ppo", "grpo", "remax", "rloo", "dpo"]
    assert "left out" not in plain.stderr
