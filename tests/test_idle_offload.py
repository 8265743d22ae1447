"""``idle_offload``: verl's ``param_offload`` / ``optimizer_offload`` on its FSDP workers.

A trained role's fp32 weight shards (4Ψ/N, FSDP's master copy) and AdamW states (8Ψ/N) wait on the CPU
while the role is idle; the weights come back for its own forwards and updates, the optimizer states for its
updates (verl 0.9 ``BaseEngineCtx._context_switch``: eval mode loads the model, train mode the model and
the optimizer). Expected differences are worked by hand from Ψ (the catalog's parameter count, which
tests/test_catalog.py checks against transformers) and N = 8 GPUs.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
from api.main import create_app
from memplan.cli.app import app
from memplan.errors import InputError
from memplan.planner import plan
from memplan.report import EstimateRequest

N = 8
GRPO = dict(model="Qwen/Qwen2.5-32B", algo="grpo", gpus="8xH100-80GB", engine="fsdp", zero_stage=3,
            gradient_checkpointing=True, rollout_engine="vllm", micro_batch_size=2, rollout_batch_size=8,
            group_size=8, prompt_len=1024, gen_len=2048, score_micro_batch_size=4, ref="none",
            vllm_tensor_parallel_size=4)  # 32B over 4-way TP engines: the weight sync stays below the generation


def _totals(report) -> dict[str, int]:
    return {p.phase: p.total_bytes for p in report.phases}


def _shards(report, role: str) -> tuple[int, int]:
    """(weights, optimizer states) per GPU by hand: fp32 shards 4Ψ/N, AdamW m and v 8Ψ/N (rounded up)."""
    psi = next(m.num_params for m in report.models if m.role == role)
    return -(-4 * psi // N), -(-8 * psi // N)


@pytest.mark.parametrize("idle, rollout, scoring", [
    ("params", "P", "0"),  # the actor's forward brings its weights back: scoring as without offload
    ("optimizer", "O", "O"),
    ("params+optimizer", "P+O", "O"),
])
def test_each_phase_holds_what_its_step_needs(idle, rollout, scoring):
    given = memplan.estimate(**GRPO)
    offloaded = memplan.estimate(**GRPO, idle_offload=idle)
    p, o = _shards(given, "actor")
    saved = {"0": 0, "P": p, "O": o, "P+O": p + o}
    before, after = _totals(given), _totals(offloaded)
    assert before["rollout"] - after["rollout"] == saved[rollout]  # vLLM generates: the actor's shards wait
    assert before["scoring"] - after["scoring"] == saved[scoring]
    assert before["actor_update"] == after["actor_update"]  # the update has everything back
    actor = offloaded.models[0]
    moved = saved["P" if idle == "params" else "O" if idle == "optimizer" else "P+O"]
    assert actor.resident.parameter + actor.resident.optstate == p + o - moved
    assert actor.host_bytes == moved
    assert offloaded.host_bytes_per_node == N * moved


def test_weight_sync_brings_the_shards_back_beside_vllms_weights():
    """verl 0.9's rollout_mode: vLLM wakes its weights alone, the actor's weight shards come back from the CPU,
    the weights go over one tensor at a time, the shards go back, then vLLM's KV cache wakes. With 2-way TP
    engines (verl's default) that moment, not the generation, sets the rollout: the resident states (optimizer
    offloaded) + the fp32 shards 4Ψ/N + vLLM's bf16 weights 2Ψ/2 + the largest tensor (the 152,064 × 5,120
    embedding in bf16)."""
    report = memplan.estimate(**{**GRPO, "vllm_tensor_parallel_size": 2}, idle_offload="params+optimizer")
    rollout = report.phases[0]
    psi = report.models[0].num_params
    p, _o = _shards(report, "actor")
    assert rollout.activity == "sampled rollout: weight sync to vLLM"
    buffers = 8192 * (4 + 8 + 8 + 1 + 8 + 2 * 5_120)  # vLLM's persistent input buffers, 8,192 tokens (vllm 0.23
    # gpu_model_runner.py:718-798: input_ids, positions, req_indices, is_token_ids, query_pos, bf16 inputs_embeds)
    assert rollout.total_bytes == rollout.resident_bytes + p + psi + 152_064 * 5_120 * 2 + buffers
    awake = memplan.estimate(**GRPO)  # nothing offloaded, 4-way engines: the generation's reservation is larger
    assert awake.phases[0].activity == "sampled rollout"


def test_the_32b_grpo_run_fits_with_verl_offload():
    """Qwen2.5-32B on 8×H100 with vLLM at 0.5: the rollout overflows with the actor's 45.8 GiB of states
    resident beside vLLM's 39.8 GiB; with both offloads the optimizer step sets the peak."""
    given = memplan.estimate(**GRPO)
    assert not given.fits and given.peak_phase == "rollout"
    offloaded = memplan.estimate(**GRPO, idle_offload="params+optimizer")
    assert offloaded.fits and offloaded.peak_phase == "actor_update"
    step = next(p for p in offloaded.phases if p.phase == "actor_update")
    p, o = _shards(offloaded, "actor")
    assert {(li.category, li.bytes) for li in step.items if "back from the CPU" in li.note} == {
        ("parameter", p), ("optstate", o)}


def test_hf_generation_brings_the_actor_back():
    hf = {**GRPO, "rollout_engine": "hf", "vllm_tensor_parallel_size": 1}  # a vLLM-only field must go with vLLM
    given = memplan.estimate(**hf)
    offloaded = memplan.estimate(**hf, idle_offload="params+optimizer")
    _p, o = _shards(given, "actor")
    assert _totals(given)["rollout"] - _totals(offloaded)["rollout"] == o  # the actor itself generates


def test_ppo_roles_wait_for_each_other():
    ppo = {**GRPO, "model": "Qwen/Qwen2.5-7B", "algo": "ppo", "ref": "separate"}
    given = memplan.estimate(**ppo)
    offloaded = memplan.estimate(**ppo, idle_offload="params+optimizer")
    actor, critic = _shards(given, "actor"), _shards(given, "critic")
    before, after = _totals(given), _totals(offloaded)
    assert before["actor_update"] - after["actor_update"] == sum(critic)  # the critic waits on the CPU
    assert before["critic_update"] - after["critic_update"] == sum(actor)
    assert before["rollout"] - after["rollout"] == sum(actor) + sum(critic)


@pytest.mark.parametrize("fields, words", [
    (dict(engine="torch", zero_stage=0, idle_offload="params+optimizer"), "not the optimizer's states"),
    (dict(engine="deepspeed"), "keeps the 16-bit weight shards"),
    (dict(offload="optimizer"), "choose one"),
    (dict(rollout_engine="hybrid-engine"), "hybrid engine"),
])
def test_contradictions_name_the_field(fields, words):
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**GRPO, "idle_offload": "params", **fields})
    assert err.value.field == "idle_offload" and words in str(err.value)


def test_deepspeed_sleep_offloads_optimizer_states_only():
    """OpenRLHF's ds.enable_sleep (``offload_deepspeed_states``: optimizer states and fp32 masters, not the 16-bit
    weights): with the actor on DeepSpeed ZeRO-3 the rollout drops its 12Ψ/N of AdamW states + masters, and the
    update loads them back."""
    fields = {**GRPO, "engine": "deepspeed"}
    given, asleep = memplan.estimate(**fields), memplan.estimate(**fields, idle_offload="optimizer")
    n = 32_763_876_352  # Qwen2.5-32B, transformers' count (tests/test_catalog.py)
    states = -(-n * 12 // 8)  # fp32 m, v and masters over 8 GPUs
    assert abs((_totals(given)["rollout"] - _totals(asleep)["rollout"]) - states) <= 8 * 512
    assert _totals(given)["actor_update"] == _totals(asleep)["actor_update"]
    assert asleep.models[0].host_bytes == given.models[0].host_bytes + given.models[0].resident.optstate


def test_cli_and_api():
    args = ["estimate", "--model", "Qwen/Qwen2.5-32B", "--algo", "grpo", "--gpus", "8xH100-80GB", "--engine", "fsdp",
            "--zero-stage", "3", "--gradient-checkpointing", "--rollout-engine", "vllm", "--micro-batch-size", "2",
            "--rollout-batch-size", "8", "--group-size", "8", "--prompt-len", "1024", "--gen-len", "2048",
            "--score-micro-batch-size", "4", "--ref", "none", "--vllm-tensor-parallel-size", "4", "--idle-offload",
            "params+optimizer"]
    runner = CliRunner()
    ok = runner.invoke(app, [*args, "--json"])
    assert ok.exit_code == 0, ok.output
    expected = memplan.estimate(**GRPO, idle_offload="params+optimizer")
    assert memplan.Report.model_validate_json(ok.stdout) == expected
    bad = runner.invoke(app, [*args[:-1], "all"])
    assert bad.exit_code == 2 and "--idle-offload" in bad.output and "params+optimizer" in bad.output
    deepspeed = runner.invoke(app, [*args, "--engine", "deepspeed"])
    assert deepspeed.exit_code == 2 and "--idle-offload" in deepspeed.output

    client = TestClient(create_app())
    r = client.post("/v1/estimate", json={**GRPO, "idle_offload": "params+optimizer"})
    assert r.status_code == 200 and r.json()["peak_bytes_per_gpu"] == expected.peak_bytes_per_gpu
    for bad_body in ({**GRPO, "idle_offload": "all"}, {**GRPO, "idle_offload": "params", "engine": "deepspeed"}):
        r = client.post("/v1/estimate", json=bad_body)
        assert r.status_code == 422 and "idle_offload" in r.text


def test_plan_offers_verl_offload_before_the_cpu_step():
    """The planner's FSDP offload chain: idle optimizer → idle params+optimizer → CPUOffloadPolicy (the
    optimizer first: it moves once a step, the weights for every forward). For the 32B run the optimizer's
    idle offload is enough; the planner's answer is re-checked here."""
    request = EstimateRequest(**GRPO)
    result = plan(request, allow={"idle_offload", "offload"}, allow_tight=True)
    assert [c.changes for c in result.candidates] == [{"idle_offload": ("none", "optimizer")}]
    assert memplan.estimate(result.candidates[0].request).fits
    assert not memplan.estimate(request).fits  # and nothing less offloaded fits: the chain starts at none
    only_cpu = plan(request, allow={"offload"}, allow_tight=True)
    assert all("idle_offload" not in c.changes for c in only_cpu.candidates)
    assert [c.changes for c in only_cpu.candidates] == [{"offload": ("none", "optimizer")}]
    deepspeed = plan(request.model_copy(update={"engine": "deepspeed"}), allow={"idle_offload", "zero_stage"},
                     allow_tight=True)
    assert all("idle_offload" not in c.changes for c in deepspeed.candidates)


def test_plan_keeps_a_given_deepspeed_idle_offload():
    """OpenRLHF's ds.enable_sleep as given: the planner's offload chain under DeepSpeed starts from it (none →
    idle optimizer → optimizer → optimizer+params), so a search that may not touch offloads keeps it."""
    request = EstimateRequest(model="meta-llama/Llama-3.1-8B", algo="ppo", gpus="8xH100-80GB", zero_stage=3,
                              gradient_checkpointing=True, rollout_engine="vllm", vllm_gpu_memory_utilization=0.9,
                              idle_offload="optimizer", micro_batch_size=4, rollout_batch_size=32, prompt_len=1024,
                              gen_len=1024)
    assert not memplan.estimate(request).fits
    result = plan(request, allow={"vllm_gpu_memory_utilization", "gradient_checkpointing"})
    assert result.candidates and all("idle_offload" not in c.changes for c in result.candidates)
    assert all(memplan.estimate(c.request).fits for c in plan(request).candidates)
