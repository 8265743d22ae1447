"""``memplan.frameworks.trl``: a TRL GRPO/RLOO recipe and accelerate config read into request fields.

Expected fields are the fixtures' own values worked by hand (tests/data/trl_grpo.yaml: 4 completions per
forward × 4 accumulation steps = 16 completions generated per GPU = 2 prompts × 8; tests/data/accelerate_zero3.yaml:
16 processes on 2 machines = 2 × 8 GPUs) and trl 1.16.0's defaults (GRPOConfig, RLOOConfig, ModelConfig) for what
they leave out.
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
from memplan.frameworks import trl

DATA = Path(__file__).parent / "data"
RECIPE, ZERO3 = DATA / "trl_grpo.yaml", DATA / "accelerate_zero3.yaml"


def test_grpo_recipe_on_zero3():
    run = trl.load(RECIPE, ZERO3, "H100-80GB")
    assert run.fields == {
        "algo": "grpo", "engine": "deepspeed", "zero_stage": 3, "offload": "optimizer", "gpus": "2x8xH100-80GB",
        "model": "Qwen/Qwen2.5-7B-Instruct", "micro_batch_size": 4, "rollout_batch_size": 2, "group_size": 8,
        "gen_len": 2048, "ref": "separate", "ref_zero_stage": 3, "reward": "rule", "dtype": "bf16",
        "gradient_checkpointing": True, "logprob_kernel": "chunked", "rollout_engine": "vllm",
        "vllm_gpu_memory_utilization": 0.4, "vllm_sleep_mode": True, "vllm_tensor_parallel_size": 1,
    }
    assert any("max_prompt_length" in n for n in run.notes)  # TRL 1.16 has none: memplan's default is used
    report = memplan.estimate(**run.fields)
    assert report.num_gpus == 16 and [m.role for m in report.models] == ["actor", "reference"]


def test_defaults_of_a_bare_grpo_command():
    """A launch command with only the model: GRPOConfig's 8 completions per forward, 8 per prompt, 512 tokens,
    beta 0 (no reference), HF generation; without accelerate config one unsharded process per GPU."""
    run = trl.fields(trl.read("accelerate launch trl/scripts/grpo.py --model_name_or_path Qwen/Qwen2.5-1.5B "
                              "--output_dir out --max_prompt_length 300"), None, "4xA100-80GB")
    f = run.fields
    assert (f["engine"], f["gpus"], f["micro_batch_size"], f["rollout_batch_size"], f["group_size"]) == (
        "torch", "4xA100-80GB", 8, 1, 8)
    assert (f["gen_len"], f["prompt_len"], f["ref"], f["rollout_engine"], f["dtype"]) == (
        512, 300, "none", "hf", "bf16")
    assert f["master_weights"] is True  # float32 load under bf16 autocast: 16 bytes per trained parameter
    assert "gather_for_generation" not in f  # only under ZeRO-3
    assert any("no accelerate config" in n for n in run.notes)
    assert any("old log-probs" in n for n in run.notes)  # aligned steps, HF generation: TRL skips that forward
    memplan.estimate(**f)


def test_prompts_spread_over_gpus():
    """6 completions per GPU with 4 per prompt: TRL spreads prompts over GPUs; memplan keeps the product
    (gcd(6, 4) = 2: 3 prompts × 2)."""
    f = trl.fields({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "per_device_train_batch_size": 3,
                    "steps_per_generation": 2, "num_generations": 4}, None, "2xL4").fields
    assert (f["rollout_batch_size"], f["group_size"]) == (3, 2)
    f = trl.fields({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "per_device_train_batch_size": 2,
                    "generation_batch_size": 32}, {"distributed_type": "MULTI_GPU", "num_processes": 4},
                   "L4").fields
    assert (f["gpus"], f["rollout_batch_size"] * f["group_size"]) == ("4xL4", 8)  # 32 ÷ 4 GPUs


def test_peft_rloo_fsdp2_and_server_mode():
    recipe = {"model_name_or_path": "meta-llama/Llama-3.1-8B", "use_peft": True, "lora_r": 64,
              "lora_target_modules": "all-linear", "load_in_4bit": True, "use_vllm": True, "vllm_mode": "server",
              "attn_implementation": "eager", "use_liger_kernel": True}
    acc = {"distributed_type": "FSDP", "num_processes": 8,
           "fsdp_config": {"fsdp_version": 2, "fsdp_reshard_after_forward": False, "fsdp_offload_params": True}}
    f = trl.fields(recipe, acc, "H100-80GB", "rloo").fields
    assert (f["algo"], f["group_size"], f["ref"]) == ("rloo", 2, "lora-shared")  # RLOOConfig: beta 0.05, 2 per prompt
    assert (f["engine"], f["zero_stage"], f["offload"]) == ("fsdp", 2, "optimizer+params")
    assert (f["lora_rank"], f["lora_targets"], f["quantize_base"]) == (64, "all-linear", "int4")
    assert (f["rollout_engine"], f["attention"], f["logprob_kernel"]) == ("remote", "eager", "chunked")
    memplan.estimate(**f)


def test_a_peft_actor_syncs_to_vllm_whole_under_zero3():
    """TRL's _iter_named_params gathers a PEFT model's every parameter at once to merge its adapters before the
    colocated vLLM loads them: the whole actor beside vLLM's reservation (awake by default)."""
    recipe = {"model_name_or_path": "Qwen/Qwen2.5-7B", "use_peft": True, "use_vllm": True, "beta": 0.0}
    zero3 = {"distributed_type": "DEEPSPEED", "num_processes": 8, "deepspeed_config": {"zero_stage": 3}}
    f = trl.fields(recipe, zero3, "H100-80GB").fields
    assert (f["rollout_engine"], f["gather_for_generation"], f["vllm_sleep_mode"]) == ("vllm", True, False)
    whole = memplan.estimate(**f, prompt_len=512).phases[0]
    unit = memplan.estimate(**{**f, "gather_for_generation": False}, prompt_len=512).phases[0]
    assert whole.activity == unit.activity == "sampled rollout: weight sync to vLLM"
    # the 7.6B bf16 base (transformers' count) instead of its largest tensor, the 152,064 × 3,584 embedding
    assert whole.total_bytes - unit.total_bytes == 2 * 7_615_616_512 - 152_064 * 3_584 * 2
    fsdp = {"distributed_type": "FSDP", "num_processes": 8, "fsdp_config": {"fsdp_version": 2}}
    assert "gather_for_generation" not in trl.fields(recipe, fsdp, "H100-80GB").fields  # FSDP: module by module


def test_frozen_models_follow_prepare_deepspeed():
    """TRL's prepare_deepspeed runs the reference and reward model at ZeRO stage 0 unless the run is at 3."""
    recipe = {"model_name_or_path": "Qwen/Qwen2.5-1.5B", "beta": 0.1,
              "reward_model_name_or_path": "Qwen/Qwen2.5-0.5B"}
    zero2 = {"distributed_type": "DEEPSPEED", "num_processes": 8, "deepspeed_config": {"zero_stage": 2}}
    f = trl.fields(recipe, zero2, "A100-40GB").fields
    assert (f["zero_stage"], f["ref_zero_stage"], f["reward_zero_stage"], f["reward_model"]) == (
        2, 0, 0, "Qwen/Qwen2.5-0.5B")
    zero3 = {**zero2, "deepspeed_config": {"zero_stage": 3, "offload_param_device": "cpu",
                                           "offload_optimizer_device": "cpu"}}
    f = trl.fields(recipe, zero3, "A100-40GB").fields
    assert (f["ref_zero_stage"], f["offload_ref"], f["offload_reward"], f["gather_for_generation"]) == (
        3, True, True, True)
    memplan.estimate(**f)


def test_dpo_and_sft():
    """DPOConfig: 1024 tokens, pairs per forward, a separate reference at ZeRO stage 0 under ZeRO-2 (as for GRPO),
    none when its log-probs are precomputed; SFTConfig: one model."""
    zero2 = {"distributed_type": "DEEPSPEED", "num_processes": 8, "deepspeed_config": {"zero_stage": 2}}
    recipe = {"model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct", "per_device_train_batch_size": 2}
    f = trl.fields(recipe, zero2, "H100-80GB", "dpo").fields
    assert (f["algo"], f["seq_len"], f["micro_batch_size"], f["ref"], f["ref_zero_stage"]) == ("dpo", 1024, 2,
                                                                                              "separate", 0)
    report = memplan.estimate(**f)
    assert [m.role for m in report.models] == ["actor", "reference"]
    f = trl.fields({**recipe, "precompute_ref_log_probs": True, "max_length": 2048}, zero2, "H100-80GB", "dpo").fields
    assert (f["ref"], f["seq_len"]) == ("none", 2048)
    f = trl.fields({**recipe, "use_peft": True}, zero2, "H100-80GB", "dpo").fields
    assert f["ref"] == "lora-shared"
    run = trl.fields({**recipe, "packing": True}, zero2, "H100-80GB", "sft")
    assert (run.fields["algo"], run.fields["seq_len"], "ref" in run.fields) == ("sft", 1024, False)
    assert run.fields["packing"] and not any("packing" in n for n in run.notes)  # SFTConfig packing (bfd)
    assert [m.role for m in memplan.estimate(**run.fields).models] == ["actor"]


@pytest.mark.parametrize("recipe, acc, message", [
    ({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "num_generations": 1}, None, "num_generations"),
    ({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "per_device_train_batch_size": "big"}, None,
     "per_device_train_batch_size"),
    ({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "vllm_gpu_memory_utilization": 3, "use_vllm": True}, None,
     "vllm_gpu_memory_utilization"),
    ({"model_name_or_path": "Qwen/Qwen2.5-0.5B"}, {"distributed_type": "TPU"}, "distributed_type"),
    ({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "generation_batch_size": 7}, {"num_processes": 2}, "multiple"),
    ({}, None, "model_name_or_path"),
])
def test_bad_settings_name_the_key(recipe, acc, message):
    with pytest.raises(InputError) as err:
        trl.fields(recipe, acc, "2xL4")
    assert message in str(err.value)


def test_not_a_recipe():
    with pytest.raises(InputError, match="no TRL settings"):
        trl.read("echo hello")
    with pytest.raises(InputError, match="not valid YAML"):
        trl.read("a: [unclosed")
    with pytest.raises(InputError, match="accelerate"):
        trl.read_accelerate("- a list")
    with pytest.raises(InputError, match="GPU count"):
        trl.fields({"model_name_or_path": "gpt2"}, None, "L4")


def test_cli_flags_override_the_recipe(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["estimate", "--trl", str(RECIPE), "--accelerate-config", str(ZERO3),
                                 "--gpus", "H100-80GB", "--prompt-len", "1024", "--micro-batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = memplan.Report.model_validate_json(result.stdout)
    assert (report.request.prompt_len, report.request.micro_batch_size, report.num_gpus) == (1024, 2, 16)
    assert "max_prompt_length" not in result.stderr  # --prompt-len given
    bare = tmp_path / "bare.yaml"
    bare.write_text("num_generations: 4\nmax_prompt_length: 128\n")  # no model: --model gives it
    result = runner.invoke(app, ["estimate", "--trl", str(bare), "--gpus", "2xL4", "--model", "gpt2", "--json"])
    assert result.exit_code == 0, result.output
    assert memplan.Report.model_validate_json(result.stdout).request.group_size == 4
    bad = runner.invoke(app, ["estimate", "--accelerate-config", str(ZERO3), "--gpus", "H100-80GB"])
    assert bad.exit_code == 2 and "--trl" in bad.output


def test_api_endpoint():
    client = TestClient(api_app)
    body = {"recipe": RECIPE.read_text(), "accelerate_config": ZERO3.read_text(), "gpu": "H100-80GB",
            "prompt_len": 512}
    response = client.post("/v1/trl/estimate", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["request"]["prompt_len"] == 512 and data["report"]["num_gpus"] == 16
    assert not any("max_prompt_length" in n for n in data["notes"])
    bad = client.post("/v1/trl/estimate", json={**body, "recipe": "num_generations: 1\nmodel_name_or_path: gpt2"})
    assert bad.status_code == 422 and "num_generations" in bad.text
    assert bad.json()["detail"][0]["loc"] == ["body", "recipe"]  # the body field, not the CLI's --trl
    unknown = client.post("/v1/trl/estimate", json={**body, "gpu": "Z100"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "gpu"]


def test_unquoted_distributed_type_no_is_read_as_no():
    """accelerate writes ``distributed_type: 'NO'`` (yaml.safe_dump quotes it); a hand-written unquoted ``NO`` is
    YAML 1.1's false, which accelerate's from_yaml_file keeps and runs undistributed: engine 'torch' either way."""
    for text in ("distributed_type: NO\nnum_processes: 1\n", "distributed_type: 'NO'\nnum_processes: 1\n"):
        acc = trl.read_accelerate(text)
        f = trl.fields({"model_name_or_path": "gpt2"}, acc, "L4").fields
        assert (f["engine"], f["gpus"]) == ("torch", "1xL4")
    with pytest.raises(InputError, match="distributed_type 'TRUE'"):  # `true` is no distributed type
        trl.fields({"model_name_or_path": "gpt2"}, trl.read_accelerate("distributed_type: true\n"), "L4")


FSDP1_TRL = """\
distributed_type: FSDP
fsdp_config:
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_offload_params: false
  fsdp_reshard_after_forward: {reshard}
  fsdp_version: 1
{extra}num_machines: 1
num_processes: 8
"""
"""The FSDP keys of TRL's examples/accelerate_configs/fsdp1.yaml (trl @f2cd577: fsdp_reshard_after_forward
FULL_SHARD, no fsdp_sharding_strategy), the reshard value and an added strategy line filled in."""


@pytest.mark.parametrize(("reshard", "extra", "stage", "noted"), [
    ("FULL_SHARD", "", 3, False),  # TRL's fsdp1.yaml: both keys agree on FULL_SHARD, nothing to note
    # accelerate 1.16 runs fsdp_sharding_strategy's default FULL_SHARD (the launcher exports it, the plugin takes it
    # first; checked with accelerate 1.16.0's prepare_multi_gpu_env + FullyShardedDataParallelPlugin())
    ("SHARD_GRAD_OP", "", 3, True),
    ("FULL_SHARD", "  fsdp_sharding_strategy: SHARD_GRAD_OP\n", 2, True),  # the strategy key runs
    ("SHARD_GRAD_OP", "  fsdp_sharding_strategy: 2\n", 2, False),  # ShardingStrategy(2) is SHARD_GRAD_OP
    ("false", "", 3, True),  # FSDP2's bool under FSDP1: not read by the plugin
])
def test_fsdp1_reshard_after_forward(reshard, extra, stage, noted):
    acc = trl.read_accelerate(FSDP1_TRL.format(reshard=reshard, extra=extra))  # extra: inside fsdp_config
    run = trl.fields({"model_name_or_path": "gpt2"}, acc, "H100-80GB")
    assert (run.fields["engine"], run.fields["zero_stage"]) == ("fsdp", stage)
    assert any("fsdp_reshard_after_forward" in n for n in run.notes) == noted


def test_fsdp_reshard_after_forward_values():
    def stage(fsdp: dict) -> int:
        return trl.fields({"model_name_or_path": "gpt2"}, {"distributed_type": "FSDP", "num_processes": 8,
                                                           "fsdp_config": fsdp}, "H100-80GB").fields["zero_stage"]

    # FSDP2: the bool is all accelerate reads (fsdp2_prepare_model's reshard_after_forward); True by default
    assert stage({"fsdp_version": 2}) == 3 and stage({"fsdp_version": 2, "fsdp_reshard_after_forward": False}) == 2
    assert stage({"fsdp_version": 2, "fsdp_reshard_after_forward": "false",
                  "fsdp_sharding_strategy": "FULL_SHARD"}) == 2  # FSDP2 ignores the FSDP1 key
    with pytest.raises(InputError, match="FSDP1 sharding strategy"):  # accelerate: "not supported with FSDP2"
        stage({"fsdp_version": 2, "fsdp_reshard_after_forward": "SHARD_GRAD_OP"})
    with pytest.raises(InputError, match="fsdp_reshard_after_forward 'reshard'"):
        stage({"fsdp_version": 1, "fsdp_reshard_after_forward": "reshard"})
    assert stage({"fsdp_version": 1, "fsdp_sharding_strategy": "HYBRID_SHARD_ZERO2"}) == 2  # accelerate's name
