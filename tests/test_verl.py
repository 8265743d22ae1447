"""``memplan.frameworks.verl``: a verl launch script read into request fields.

Expected fields are the scripts' own values worked by hand (tests/data/verl_grpo.sh: 1024 prompts over
2 nodes × 8 GPUs = 64 per GPU; max_response_length = $((1024 * 3)) = 3072) and verl 0.9.1's defaults
(``_generated_ppo_trainer.yaml``) for what a script leaves out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import memplan
from memplan.cli.app import app
from memplan.errors import InputError
from memplan.frameworks import verl

SCRIPT = Path(__file__).parent / "data" / "verl_grpo.sh"


def test_grpo_script():
    run = verl.load(SCRIPT, "H100-80GB")
    assert run.fields == {
        "engine": "fsdp", "gpus": "2x8xH100-80GB",
        "model": "Qwen/Qwen2.5-7B-Instruct", "algo": "grpo",
        "fsdp_version": 1,  # actor.strategy: fsdp, verl 0.9.1's default (the script leaves it): FSDP1
        "reward": "rule",
        "zero_stage": 3, "idle_offload": "optimizer", "dtype": "bf16", "gradient_checkpointing": True,
        "ref": "separate", "offload_ref": True, "prompt_len": 1024, "gen_len": 3072, "micro_batch_size": 8,
        "score_micro_batch_size": 32, "rollout_batch_size": 64, "group_size": 5, "rollout_engine": "vllm",
        "vllm_gpu_memory_utilization": 0.6, "vllm_tensor_parallel_size": 2, "logprob_kernel": "fused",
        "processes_per_gpu": 2, "weight_sync_bucket_mb": 2048,
        "vllm_max_num_batched_tokens": 8192,  # verl 0.9.1's default (the script leaves it)
        "vllm_sleep_mode": True,  # rollout.free_cache_engine: true, verl 0.9.1's default (the script leaves it)
        "packing": True,  # use_remove_padding=True
        # fsdp_workers.py compute_log_prob: calculate_entropy = not is_lora; entropy_coeff=0 keeps it out of the
        # update; use_torch_compile (default True) compiles entropy_from_logits
        "entropy": "scoring", "entropy_kernel": "compiled",
    }
    assert not any("Qwen2.5-7B-Instruct" in n for n in run.notes)  # in the catalog: no note
    assert not any("upper bound" in n or "not modeled" in n for n in run.notes)
    memplan.estimate(**run.fields)  # a valid request


def test_the_weight_sync_packs_a_bucket_beside_the_engines_processes():
    """verl 0.9's async rollout: vLLM's GPU workers run beside the FSDP worker (two processes per GPU, each with
    its runtime), and the actor's weights reach them through a 2048 MiB bucket (``BucketedWeightSender``,
    ``update_weights_bucket_megabytes``), alive at the sync beside one gathered parameter and vLLM's woken
    weights; a script's own bucket size is read."""
    from memplan.catalog import get_gpu
    from memplan.estimator.algorithms import generate, model_states
    from memplan.estimator.resolve import resolve
    from memplan.report import EstimateRequest

    report = memplan.estimate(**verl.load(SCRIPT, "H100-80GB").fields)
    assert report.fixed_bytes == 2 * (get_gpu("H100-80GB").cuda_context_bytes + 32 * 2**20 + 256 * 2**20)
    run = resolve(EstimateRequest(**verl.load(SCRIPT, "H100-80GB").fields))
    actor = run.roles[0]
    sync = generate(run, actor, model_states(actor, run.e, run.lora_rank), "sampled rollout")[-1]
    assert sync.name == "sampled rollout: weight sync to vLLM"
    assert [i[2] for i in sync.items if i[1] == "buffer"] == [2048 * 2**20]
    base = ("actor_rollout_ref.model.path=Qwen/Qwen2.5-7B actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 "
            "actor_rollout_ref.rollout.name=")
    smaller = verl.fields(verl.read(base + "vllm actor_rollout_ref.rollout.checkpoint_engine."
                                    "update_weights_bucket_megabytes=512"), "H100-80GB").fields
    assert smaller["weight_sync_bucket_mb"] == 512
    hf = verl.fields(verl.read(base + "hf"), "H100-80GB").fields
    assert "processes_per_gpu" not in hf and "weight_sync_bucket_mb" not in hf


def test_a_bucket_without_an_engine_to_send_to_is_refused():
    with pytest.raises(InputError) as err:
        memplan.estimate(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", weight_sync_bucket_mb=512)
    assert err.value.field == "weight_sync_bucket_mb"
    remote = memplan.estimate(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", zero_stage=3,
                              rollout_engine="remote", weight_sync_bucket_mb=512)
    rollout = next(p for p in remote.phases if p.phase == "rollout")
    assert [li.bytes for li in rollout.items if li.category == "buffer" and "bucket" in li.note] == [512 * 2**20]
    bad = CliRunner().invoke(app, ["estimate", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus",
                                   "8xH100-80GB", "--weight-sync-bucket-mb", "512"])
    assert bad.exit_code == 2 and "--weight-sync-bucket-mb" in bad.output


def test_ppo_overrides_with_defaults():
    text = ("actor_rollout_ref.model.path=meta-llama/Llama-3.1-8B critic.model.path=Qwen/Qwen2.5-1.5B "
            "reward_model.enable=True reward_model.model.path=Qwen/Qwen2.5-1.5B actor_rollout_ref.rollout.name=vllm "
            "actor_rollout_ref.actor.use_dynamic_bsz=True actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8192 "
            "actor_rollout_ref.actor.fsdp_config.offload_policy=True actor_rollout_ref.actor.strategy=fsdp2 "
            "actor_rollout_ref.model.lora_rank=32 actor_rollout_ref.actor.use_kl_loss=True trainer.n_gpus_per_node=4")
    run = verl.fields(verl.read(text), "A100-80GB")
    f = run.fields
    assert (f["algo"], f["gpus"], f["critic_model"], f["reward"], f["reward_model"]) == (
        "ppo", "4xA100-80GB", "Qwen/Qwen2.5-1.5B", "model", "Qwen/Qwen2.5-1.5B")  # adv_estimator gae (default)
    assert (f["offload"], "idle_offload" in f, f["lora_rank"], f["ref"]) == (
        "optimizer+params", False, 32, "lora-shared")
    # dynamic batches over packed sequences (use_remove_padding, verl 0.9's default): a cap of 8192 tokens per GPU
    # for training and for scoring (log_prob_max_token_len_per_gpu defaults to ppo_max_token_len_per_gpu); the
    # micro batch the cap holds at full length, 8192 ÷ (512 + 512) = 8 sequences, for the planner and timing
    # scoring: the critic's forward_max_token_len_per_gpu defaults to critic.ppo_max_token_len_per_gpu, 32768
    # (_generated_ppo_trainer.yaml), the largest of the three scoring caps
    assert (f["packing"], f["max_tokens_per_gpu"], f["score_max_tokens_per_gpu"]) == (True, 8192, 32768)
    assert any("scoring token caps differ" in n for n in run.notes)
    assert (f["micro_batch_size"], "score_micro_batch_size" in f, f["prompt_len"], f["gen_len"]) == (8, False, 512, 512)
    assert (f["rollout_batch_size"], f["group_size"], f["vllm_gpu_memory_utilization"]) == (256, 1, 0.5)  # 1024 ÷ 4
    assert f["fsdp_version"] == 2  # strategy=fsdp2: fully_shard
    assert not any("FSDP1" in n for n in run.notes)
    memplan.estimate(**f)


def test_shell_variables_and_arithmetic():
    text = """
    export N=4
    LEN=${LEN:-2048}
    python3 -m verl.trainer.main_ppo algorithm.adv_estimator=remax \\
      actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B data.max_response_length=$(( LEN / 2 )) \\
      actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=${N} trainer.n_gpus_per_node=$N \\
      actor_rollout_ref.rollout.name=hf  # a comment
    """
    f = verl.fields(verl.read(text)).fields
    assert (f["algo"], f["gen_len"], f["micro_batch_size"], f["rollout_engine"], f["ref"]) == (
        "remax", 1024, 4, "hf", "none")
    assert "gpus" not in f  # no GPU named


@pytest.mark.parametrize("text, words", [
    ("actor_rollout_ref.model.path=Qwen/Qwen2.5-7B actor_rollout_ref.actor.strategy=megatron", "megatron"),
    ("actor_rollout_ref.model.path=Qwen/Qwen2.5-7B actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
     "rollout.name"),
    ("actor_rollout_ref.model.path=Qwen/Qwen2.5-7B actor_rollout_ref.rollout.name=vllm",
     "ppo_micro_batch_size_per_gpu"),
    ("actor_rollout_ref.model.path=$MODEL actor_rollout_ref.rollout.name=vllm", "model.path"),
    ("data.max_response_length=$((2 ** 10)) actor_rollout_ref.model.path=x", "cannot evaluate"),
    ("python3 train.py --lr 1e-6", "no verl overrides"),
])
def test_bad_scripts_name_the_field(text, words):
    with pytest.raises(InputError) as err:
        verl.fields(verl.read(text), "H100-80GB")
    assert err.value.field == "verl" and words in str(err.value)


def test_cli_reads_the_script_and_flags_override_it():
    runner = CliRunner()
    r = runner.invoke(app, ["estimate", "--verl", str(SCRIPT), "--gpus", "H100-80GB", "--micro-batch-size", "2",
                            "--json"])
    assert r.exit_code == 0, r.output
    fields = {**verl.load(SCRIPT, "H100-80GB").fields, "micro_batch_size": 2}
    assert memplan.Report.model_validate_json(r.stdout) == memplan.estimate(**fields)
    assert "modeled as FSDP2" not in r.stderr  # strategy fsdp is estimated as FSDP1 (fsdp_version 1)
    whole = runner.invoke(app, ["estimate", "--verl", str(SCRIPT), "--gpus", "4xA100-80GB", "--json"])
    assert memplan.Report.model_validate_json(whole.stdout).num_gpus == 4  # a cluster with a count wins
    for args, words in ((["--verl", str(SCRIPT)], "--gpus"),
                        (["--verl", "missing.sh", "--gpus", "H100-80GB"], "--verl")):
        bad = runner.invoke(app, ["estimate", *args])
        assert bad.exit_code == 2 and words in bad.output, bad.output


def test_rest_reads_and_estimates_a_script():
    from fastapi.testclient import TestClient

    from api.main import create_app

    client = TestClient(create_app())
    r = client.post("/v1/verl/estimate", json={"script": SCRIPT.read_text(), "gpu": "H100-80GB"})
    assert r.status_code == 200, r.text
    run = verl.load(SCRIPT, "H100-80GB")
    body = r.json()
    assert body["notes"] == run.notes
    assert memplan.Report.model_validate(body["report"]) == memplan.estimate(**run.fields)
    for bad, loc in (({"script": "actor_rollout_ref.actor.strategy=megatron", "gpu": "H100-80GB"}, "script"),
                     ({"script": SCRIPT.read_text(), "gpu": "Z100"}, "gpu"),
                     ({"script": "", "gpu": "H100-80GB"}, "script")):
        r = client.post("/v1/verl/estimate", json=bad)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == loc, r.text


def test_overrides_given_as_text_too_long_for_a_path():
    """``load`` takes a path or the overrides' text; a text no file system takes as a path is read as text."""
    with pytest.raises(InputError) as err:
        verl.load("actor_rollout_ref.model.path=" + "x" * 5000, "H100-80GB")
    assert err.value.field == "verl" and "ppo_micro_batch_size_per_gpu" in str(err.value)


def test_a_tune_missing_from_the_catalog_is_its_base():
    """Qwen2.5-14B-Instruct is not in the catalog (its config.json could not be checked): its base, said so."""
    run = verl.fields(verl.read("actor_rollout_ref.model.path=Qwen/Qwen2.5-14B-Instruct "
                                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 "
                                "actor_rollout_ref.rollout.name=vllm"), "H100-80GB")
    assert run.fields["model"] == "Qwen/Qwen2.5-14B"
    assert any("Qwen2.5-14B-Instruct" in n and "chat/instruct tune" in n for n in run.notes)


def test_layered_summon_sleeps_at_level_1_with_the_weights_in_host_ram():
    # verl vllm_rollout.py (vLLMAsyncRollout.__init__): rollout.layered_summon → sleep_level 1, whose
    # CuMemAllocator copies the 'weights' tag to the host; otherwise level 2 (vLLM ≥ 0.8.5) keeps nothing there.
    text = SCRIPT.read_text()
    plain = verl.fields(verl.read(text), "H100-80GB").fields
    layered = verl.fields(verl.read(text.rstrip() + " \\\n    actor_rollout_ref.rollout.layered_summon=True\n"),
                          "H100-80GB").fields
    assert "vllm_sleep_level" not in plain and layered["vllm_sleep_level"] == 1
    base = memplan.estimate(memplan.EstimateRequest(**plain))
    summoned = memplan.estimate(memplan.EstimateRequest(**layered))
    # Qwen2.5-7B-Instruct: 7,615,616,512 bf16 parameters over vLLM TP 2 on each of a node's 8 GPUs
    assert summoned.host_bytes_per_node - base.host_bytes_per_node == 7_615_616_512 * 2 // 2 * 8
    assert summoned.peak_bytes_per_gpu == base.peak_bytes_per_gpu  # GPU memory: the same sleep
