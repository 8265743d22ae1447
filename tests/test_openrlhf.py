"""``memplan.frameworks.openrlhf``: an OpenRLHF launch command read into request fields.

Expected fields are the fixture's own values worked by hand (tests/data/openrlhf_ppo.sh: 256 prompts over the
actor's 1 × 8 GPUs = 32 per GPU; data.max_len 2048 − max_new_tokens 1024 = a 1,024-token prompt) and OpenRLHF
0.11.2's defaults (``cli/train_ppo_ray.py``) for what it leaves out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
from api.main import app as api_app
from memplan.cli.app import app
from memplan.errors import InputError
from memplan.frameworks import openrlhf

SCRIPT = Path(__file__).parent / "data" / "openrlhf_ppo.sh"


def test_colocated_ppo_script():
    run = openrlhf.load(SCRIPT, "H100-80GB")
    assert run.fields == {
        "engine": "deepspeed", "model": "meta-llama/Llama-3.1-8B-Instruct", "algo": "ppo", "reward": "model",
        "reward_model": "meta-llama/Llama-3.1-8B", "critic_model": "meta-llama/Llama-3.1-8B", "ref": "separate",
        "zero_stage": 3, "ref_zero_stage": 3, "reward_zero_stage": 3, "dtype": "bf16", "attention": "flash",
        "gradient_checkpointing": True, "placement": "colocated", "rollout_engine": "vllm",
        "vllm_gpu_memory_utilization": 0.6, "vllm_sleep_mode": True, "vllm_tensor_parallel_size": 2,
        "vllm_sleep_level": 1, "gpus": "8xH100-80GB",
        "micro_batch_size": 4, "score_micro_batch_size": 8, "rollout_batch_size": 32, "group_size": 1,
        "prompt_len": 1024, "gen_len": 1024, "idle_offload": "optimizer", "logprob_kernel": "fp32-fused",
        "processes_per_gpu": 5,
        "packing": True,  # --ds.packing_samples: the micro batches' sequences packed without padding
    }
    assert not any("packing" in n or "not modeled" in n for n in run.notes)
    report = memplan.estimate(**run.fields)
    assert [m.role for m in report.models] == ["actor", "critic", "reference", "reward"]


def test_every_ray_actor_keeps_its_own_runtime():
    """colocate_all puts four models' Ray actors and one vLLM worker (4 engines × TP 2 = 8 GPUs) on every GPU:
    five processes, each with its own CUDA context, cuBLAS workspace (32 MiB) and NCCL buffers (256 MiB)."""
    from memplan.catalog import get_gpu

    report = memplan.estimate(**openrlhf.load(SCRIPT, "H100-80GB").fields)
    assert report.fixed_bytes == 5 * (get_gpu("H100-80GB").cuda_context_bytes + 32 * 2**20 + 256 * 2**20)
    notes = [li.note for li in report.resident_items if li.role == "runtime"]
    assert notes == ["CUDA context × 5 processes", "cuBLAS workspace × 5 processes", "NCCL buffers × 5 processes"]


def test_log_probs_over_every_position_in_fp32():
    """OpenRLHF 0.11's ``Actor.forward`` runs the LM head over all 2,048 positions (no ``logits_to_keep``), casts
    the logits to fp32 and takes log-probs with flash-attn's cross-entropy (out-of-place backward). Scoring 8
    sequences: bf16 logits and their fp32 copy at the cast, (2 + 4)·V, plus the int64 rolled labels; training
    4: the fp32 logits the kernel saved and the fp32 gradient it allocates, 8·V, plus 16 bytes per position."""
    v = 128_256  # Llama-3.1-8B's vocabulary
    report = memplan.estimate(**openrlhf.load(SCRIPT, "H100-80GB").fields)
    logits = {p.phase: [li.bytes for li in p.items if li.category == "logits"] for p in report.phases}
    assert logits["scoring"] == [8 * 2048 * (6 * v + 8)]
    assert logits["actor_update"] == [4 * 2048 * (8 * v + 16)]


def test_split_placement_with_remote_engines_and_legacy_names():
    """OpenRLHF ≤ 0.9's flat names; without colocate_all each model has its own GPUs (memplan's split: four
    groups of the actor's 2 × 8) and the vLLM engines theirs (remote); ZeRO-2 runs frozen models at stage 0."""
    text = ("python3 -m openrlhf.cli.train_ppo_ray --pretrain Qwen/Qwen2.5-7B --reward_pretrain Qwen/Qwen2.5-1.5B "
            "--actor_num_nodes 2 --actor_num_gpus_per_node 8 --vllm_num_engines 8 --micro_train_batch_size 2 "
            "--micro_rollout_batch_size 4 --rollout_batch_size 1000 --n_samples_per_prompt 4 --prompt_max_len 1024 "
            "--generate_max_len 2048 --zero_stage 2 --bf16 --adam_offload --lora_rank 64 --flash_attn")
    run = openrlhf.fields(openrlhf.read(text), "A100-80GB")
    f = run.fields
    assert (f["placement"], f["gpus"], f["rollout_engine"]) == ("split", "8x8xA100-80GB", "remote")  # 4 × 16
    assert (f["critic_model"], f["ref"], f["ref_zero_stage"], f["offload"]) == (
        "Qwen/Qwen2.5-1.5B", "separate", 0, "optimizer")  # critic from the reward model; LoRA: still a reference
    assert (f["rollout_batch_size"], f["group_size"], f["prompt_len"], f["gen_len"]) == (63, 4, 1024, 2048)
    assert (f["lora_rank"], f["micro_batch_size"], f["score_micro_batch_size"]) == (64, 2, 4)  # ⌈1000 ÷ 16⌉ = 63
    assert any("4 GPU groups with 16 GPUs" in n for n in run.notes) and any("1000 over 16" in n for n in run.notes)
    assert "processes_per_gpu" not in f  # one Ray actor per GPU of each group
    memplan.estimate(**f)


def test_paired_models_share_their_gpus():
    """colocate_actor_ref and colocate_critic_reward (without colocate_all): two GPU groups of the actor's 8, each
    holding two models' Ray actors; a critic-free run pairing its actor and reference is one group: every GPU
    holds both, a process each."""
    text = ("--actor.model_name_or_path meta-llama/Llama-3.1-8B --reward.model_name_or_path meta-llama/Llama-3.1-8B "
            "--algo.kl.init_coef 0.01 --ds.zero_stage 3 --vllm.num_engines 4 --vllm.tensor_parallel_size 2 "
            "--train.colocate_actor_ref --train.colocate_critic_reward")
    f = openrlhf.fields(openrlhf.read(text), "H100-80GB").fields
    assert (f["placement"], f["gpus"], f["rollout_engine"]) == ("split", "2x8xH100-80GB", "remote")
    assert f["split_groups"] == (("actor", "reference"), ("critic", "reward"))
    report = memplan.estimate(**f)
    assert {p.group for p in report.phases} == {"actor+reference", "critic+reward"}
    grpo = openrlhf.fields(openrlhf.read("--actor.model_name_or_path Qwen/Qwen2.5-1.5B --algo.advantage.estimator "
                                         "group_norm --algo.kl.init_coef 0.01 --train.colocate_actor_ref"),
                           "H100-80GB").fields
    assert (grpo["placement"], grpo["processes_per_gpu"], grpo["gpus"]) == ("colocated", 2, "8xH100-80GB")
    assert "split_groups" not in grpo


def test_colocated_grpo_counts_its_processes():
    """colocate_all GRPO with a KL reference and rule-based rewards: the actor's and reference's Ray actors and
    the vLLM worker on every GPU; without vLLM engines, the two models only."""
    base = ("--actor.model_name_or_path Qwen/Qwen2.5-1.5B --algo.advantage.estimator group_norm "
            "--algo.kl.init_coef 0.01 --train.colocate_all")
    with_vllm = openrlhf.fields(openrlhf.read(base + " --vllm.num_engines 8"), "H100-80GB").fields
    assert (with_vllm["processes_per_gpu"], with_vllm["rollout_engine"]) == (3, "vllm")
    without = openrlhf.fields(openrlhf.read(base), "H100-80GB").fields
    assert (without["processes_per_gpu"], without["rollout_engine"]) == (2, "hf")


def test_several_reward_models_start_the_critic_from_the_first():
    """train_ppo_ray: critic.model_name_or_path defaults to the first of the comma-separated reward models."""
    run = openrlhf.fields(openrlhf.read("--actor.model_name_or_path Qwen/Qwen2.5-1.5B "
                                        "--reward.model_name_or_path Qwen/Qwen2.5-0.5B,Qwen/Qwen2.5-1.5B"), "L40S")
    assert (run.fields["critic_model"], run.fields["reward_model"]) == ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B")
    assert any("first reward model" in n for n in run.notes)


def test_critic_free_estimators():
    base = "--actor.model_name_or_path Qwen/Qwen2.5-1.5B --rollout.n_samples_per_prompt 8 --actor.num_gpus_per_node 4"
    f = openrlhf.fields(openrlhf.read(base + " --algo.advantage.estimator group_norm --algo.kl.init_coef 0"),
                        "L40S").fields
    assert (f["algo"], f["ref"], f["reward"], f["placement"], f["gpus"]) == ("grpo", "none", "rule", "colocated",
                                                                          "4xL40S")  # one model: nothing to split
    run = openrlhf.fields(openrlhf.read(base + " --algo.advantage.estimator reinforce_baseline"), "L40S")
    assert run.fields["algo"] == "grpo" and any("reinforce_baseline" in n for n in run.notes)
    assert any("half prompt" in n for n in run.notes)  # max_new_tokens unset: 1024 + 1024 of the 2048 default
    memplan.estimate(**run.fields)


@pytest.mark.parametrize("text, words", [
    ("--actor.model_name_or_path gpt2 --algo.advantage.estimator ppo_plus", "algo.advantage.estimator"),
    ("--actor.model_name_or_path gpt2 --train.micro_batch_size 0", "train.micro_batch_size"),
    ("--actor.model_name_or_path gpt2 --data.max_len 512 --rollout.max_new_tokens 512", "leaves no prompt"),
    ("--actor.model_name_or_path gpt2 --ds.param_dtype int3", "ds.param_dtype"),
    ("--train.micro_batch_size 2", "actor.model_name_or_path"),
    ("echo hi", "no OpenRLHF arguments"),
])
def test_bad_commands_name_the_field(text, words):
    with pytest.raises(InputError) as err:
        openrlhf.fields(openrlhf.read(text), "H100-80GB")
    assert err.value.field == "openrlhf" and words in str(err.value)


def test_cli_and_api():
    runner = CliRunner()
    r = runner.invoke(app, ["estimate", "--openrlhf", str(SCRIPT), "--gpus", "H100-80GB", "--micro-batch-size", "2",
                            "--json"])
    assert r.exit_code == 0, r.output
    fields = {**openrlhf.load(SCRIPT, "H100-80GB").fields, "micro_batch_size": 2}
    assert memplan.Report.model_validate_json(r.stdout) == memplan.estimate(**fields)
    assert memplan.Report.model_validate_json(r.stdout).request.packing  # --ds.packing_samples
    both = runner.invoke(app, ["estimate", "--openrlhf", str(SCRIPT), "--verl", str(SCRIPT), "--gpus", "H100-80GB"])
    assert both.exit_code == 2 and "one framework" in both.output
    client = TestClient(api_app)
    ok = client.post("/v1/openrlhf/estimate", json={"script": SCRIPT.read_text(), "gpu": "H100-80GB"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["report"]["num_gpus"] == 8 and ok.json()["request"]["algo"] == "ppo"
    bad = client.post("/v1/openrlhf/estimate", json={"script": "--train.micro_batch_size 2", "gpu": "H100-80GB"})
    assert bad.status_code == 422 and "actor.model_name_or_path" in bad.text
    assert bad.json()["detail"][0]["loc"] == ["body", "script"]


def test_frozen_models_offload_each_by_its_own_flag():
    """0.11: --ref.offload and --reward.offload (get_ds_eval_config(offload=...) per model, ZeRO-3); ≤ 0.9's
    --ref_reward_offload sets both."""
    base = ("--actor.model_name_or_path Qwen/Qwen2.5-1.5B --reward.model_name_or_path Qwen/Qwen2.5-0.5B "
            "--ds.zero_stage 3 ")
    f = openrlhf.fields(openrlhf.read(base + "--ref.offload"), "L40S").fields
    assert (f.get("offload_ref"), f.get("offload_reward")) == (True, None)
    f = openrlhf.fields(openrlhf.read(base + "--reward.offload"), "L40S").fields
    assert (f.get("offload_ref"), f.get("offload_reward")) == (None, True)
    f = openrlhf.fields(openrlhf.read(base + "--ref_reward_offload"), "L40S").fields
    assert (f["offload_ref"], f["offload_reward"]) == (True, True)
    memplan.estimate(**f)


def test_vllm_sleeps_at_level_1_with_its_weights_in_host_ram():
    """OpenRLHF's engines sleep at level 1 (trainer/ray/vllm_engine.py: ``sleep(self, level=1)``, called as
    ``batch_vllm_engine_call(engines, "sleep")``), so vLLM's CuMemAllocator copies its 'weights' to pinned host RAM;
    verl (vLLM ≥ 0.8.5) and TRL sleep at level 2, which discards them. Worked by hand for the fixture: Llama-3.1-8B,
    8,030,261,248 parameters (transformers' count) × 2 bytes (bf16) ÷ vllm.tensor_parallel_size 2 = 8,030,261,248
    bytes per GPU, × 4 engines × 2 GPUs = 8 vLLM workers on the node = 64,242,089,984 bytes."""
    fields = openrlhf.load(SCRIPT, "H100-80GB").fields
    assert (fields["vllm_sleep_mode"], fields["vllm_sleep_level"]) == (True, 1)
    level1 = memplan.estimate(**fields)
    level2 = memplan.estimate(**{**fields, "vllm_sleep_level": 2})
    assert level1.host_bytes_per_node - level2.host_bytes_per_node == 8_030_261_248 * 2 // 2 * 8
    assert any("level 1" in n for n in level1.notes) and not any("level 1" in n for n in level2.notes)
    # the OpenRLHF preset's unset level is OpenRLHF's; without vllm.enable_sleep nothing is kept asleep
    unset = memplan.estimate(**{**fields, "vllm_sleep_level": None, "framework": "openrlhf"})
    assert unset.host_bytes_per_node == level1.host_bytes_per_node
    awake = memplan.estimate(**{**fields, "vllm_sleep_mode": False})
    assert awake.host_bytes_per_node == level2.host_bytes_per_node
    too_little = memplan.estimate(**{**fields, "host_ram_bytes_per_node": 32 << 30})  # 64.2 GB > 32 GiB
    assert not too_little.host_fits and any("vLLM asleep at level 1" in r for r in too_little.reasons)
