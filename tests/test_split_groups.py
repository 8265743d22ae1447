"""Split placement with groups of roles (``split_groups``): OpenRLHF's colocate_actor_ref / colocate_critic_reward.

Each GPU group holds its roles' resident states and one runtime per role (a Ray actor each: CUDA context,
cuBLAS workspace, NCCL buffers); a phase's peak is the busiest group's. Expected values are the models' own
resident bytes (their ``ModelReport``, whatever the placement) plus the runtimes worked by hand from the
catalog's CUDA context, and the same run without groups.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
from api.main import create_app
from memplan.catalog import get_gpu
from memplan.cli.app import app
from memplan.errors import InputError

PPO = dict(model="meta-llama/Llama-3.1-8B", algo="ppo", gpus="2x8xH100-80GB", zero_stage=3, placement="split",
           gradient_checkpointing=True, rollout_engine="remote", micro_batch_size=4, prompt_len=1024, gen_len=1024)
PAIRS = (("actor", "reference"), ("critic", "reward"))
RUNTIME = get_gpu("H100-80GB").cuda_context_bytes + 32 * 2**20 + 256 * 2**20  # context, cuBLAS, NCCL


def _phase(report, name):
    return next(p for p in report.phases if p.phase == name)


def test_each_group_holds_its_roles_and_a_runtime_per_role():
    report = memplan.estimate(**PPO, split_groups=PAIRS)
    resident = {m.role: m.resident.total for m in report.models}
    update = _phase(report, "actor_update")
    assert update.group == "actor+reference"
    assert update.resident_bytes == resident["actor"] + resident["reference"] + 2 * RUNTIME
    critic = _phase(report, "critic_update")
    assert critic.group == "critic+reward"
    assert critic.resident_bytes == resident["critic"] + resident["reward"] + 2 * RUNTIME
    assert report.fixed_bytes == 2 * RUNTIME  # the peak group's
    # 16 GPUs in two groups of 8 (ZeRO-3 over 8), where four groups of 4 shard over 4
    alone = memplan.estimate(**PPO)
    assert {m.role: m.zero_stage for m in report.models} == {m.role: m.zero_stage for m in alone.models}
    assert resident["actor"] < next(m.resident.total for m in alone.models if m.role == "actor")
    # the same transients on the actor's GPUs: the update's largest activity is the actor's, as alone
    assert update.activity == _phase(alone, "actor_update").activity


def test_a_lora_shared_reference_runs_on_the_actors_gpus():
    """The reference with the adapter off is the actor itself: its forward is on the actor's GPUs, in the
    actor's process (one runtime), not on a group of its own."""
    report = memplan.estimate(**{**PPO, "algo": "grpo", "reward": "rule", "gpus": "8xH100-80GB"}, lora_rank=16,
                              ref="lora-shared")
    scoring = _phase(report, "scoring")
    assert scoring.group == "actor+reference"
    assert report.fixed_bytes == RUNTIME


@pytest.mark.parametrize("fields, words", [
    (dict(split_groups=(("actor", "critic"),), algo="grpo", reward="rule"), "critic is not one of"),
    (dict(split_groups=(("actor", "reference"), ("reference", "reward"))), "reference is in two groups"),
    (dict(split_groups=((),)), "at least one role"),
    (dict(split_groups=PAIRS, placement="colocated"), "placement 'split'"),
    (dict(split_groups=PAIRS, processes_per_gpu=2), "one process per role"),
])
def test_bad_groups_name_the_field(fields, words):
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**PPO, **fields})
    assert words in str(err.value)
    assert err.value.field in ("split_groups", "processes_per_gpu")


def test_cli_and_api():
    args = ["estimate", "--model", "meta-llama/Llama-3.1-8B", "--algo", "ppo", "--gpus", "2x8xH100-80GB",
            "--zero-stage", "3", "--placement", "split", "--gradient-checkpointing", "--rollout-engine", "remote",
            "--micro-batch-size", "4", "--prompt-len", "1024", "--gen-len", "1024"]
    ok = CliRunner().invoke(app, [*args, "--split-groups", "actor+reference,critic+reward", "--json"])
    assert ok.exit_code == 0, ok.output
    assert memplan.Report.model_validate_json(ok.stdout) == memplan.estimate(**PPO, split_groups=PAIRS)
    table = CliRunner().invoke(app, [*args, "--split-groups", "actor+reference,critic+reward"], env={"COLUMNS": "200"})
    assert "actor_update on the actor+reference GPUs; critic_update on the critic+reward GPUs" in table.stdout
    bad = CliRunner().invoke(app, [*args, "--split-groups", "actor+ref"])
    assert bad.exit_code == 2 and "--split-groups" in bad.output
    client = TestClient(create_app())
    r = client.post("/v1/estimate", json={**PPO, "split_groups": [["actor", "reference"], ["critic", "reward"]]})
    assert r.status_code == 200 and r.json()["fixed_bytes"] == 2 * RUNTIME
    r = client.post("/v1/estimate", json={**PPO, "split_groups": [["actor", "critic"], ["critic", "reward"]]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "split_groups"]


def test_the_planner_drops_the_groups_when_it_colocates():
    """On 8 A100-40GB the two groups of 4 need 40.8 GiB; every model on all 8 GPUs (ZeRO-3 over 8) fits."""
    from memplan.planner import plan
    from memplan.report import EstimateRequest

    request = EstimateRequest(**{**PPO, "gpus": "8xA100-40GB", "micro_batch_size": 1}, split_groups=PAIRS)
    assert not memplan.estimate(request).fits
    result = plan(request, allow={"placement"})
    colocated = [c for c in result.candidates if c.changes.get("placement") == ("split", "colocated")]
    assert colocated and all(not c.request.split_groups and c.fits for c in colocated)
