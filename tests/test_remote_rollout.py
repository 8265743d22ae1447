"""``rollout_engine='remote'``: generation on other GPUs (TRL's ``vllm_mode='server'``, OpenRLHF's vLLM engines).

The training GPUs only send the actor's weights to the server, one gathered unit at a time: under ZeRO-3 the
largest module plus DeepSpeed's prefetch bucket (``stage3_prefetch_bucket_size`` = 5e7 elements), in bf16.
Worked by hand from Qwen2.5-7B's config.json facts (vocabulary 152,064 × hidden 3,584: the embedding is its
largest matrix).
"""

from __future__ import annotations

from typer.testing import CliRunner

import memplan
from memplan.cli.app import app

RUN = dict(model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", zero_stage=3, gradient_checkpointing=True,
           micro_batch_size=4, group_size=8, prompt_len=512, gen_len=1024)


def _phase(report, name):
    return next(p for p in report.phases if p.phase == name)


def test_only_the_weight_sync_runs_here():
    remote = memplan.estimate(**RUN, rollout_engine="remote")
    rollout = _phase(remote, "rollout")
    gathered = 2 * (152_064 * 3_584 + 50_000_000)  # bf16: the embedding + the prefetch bucket
    assert [(li.category, li.bytes) for li in rollout.items] == [("parameter", gathered)]
    assert rollout.total_bytes == rollout.resident_bytes + gathered
    assert any("other GPUs" in n for n in remote.notes)


def test_the_other_phases_are_as_with_local_generation():
    remote = memplan.estimate(**RUN, rollout_engine="remote")
    local = memplan.estimate(**RUN, rollout_engine="hf")
    for phase in ("scoring", "actor_update"):
        assert _phase(remote, phase) == _phase(local, phase)
    assert _phase(remote, "rollout").total_bytes < _phase(local, "rollout").total_bytes


def test_cli():
    r = CliRunner().invoke(app, ["estimate", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus", "8xH100-80GB",
                                 "--zero-stage", "3", "--rollout-engine", "remote", "--json"])
    assert r.exit_code == 0, r.output
    assert memplan.Report.model_validate_json(r.stdout) == memplan.estimate(
        model="Qwen/Qwen2.5-7B", algo="grpo", gpus="8xH100-80GB", zero_stage=3, rollout_engine="remote")


def test_gather_for_generation_holds_the_whole_actor():
    """TRL's ``ds3_gather_for_generation`` (its default): a ZeRO-3 actor gathered whole, 2 bytes × Ψ (the
    catalog's parameter count, checked against transformers), to generate or to send to the remote engine;
    nothing changes for an actor that is not sharded."""
    psi = memplan.estimate(**RUN).models[0].num_params
    for engine in ("hf", "remote"):
        report = memplan.estimate(**RUN, rollout_engine=engine, gather_for_generation=True)
        rollout = _phase(report, "rollout")
        assert [li.bytes for li in rollout.items if "whole actor" in li.note] == [2 * psi], engine
    stage2 = {**RUN, "zero_stage": 2}
    assert memplan.estimate(**stage2, gather_for_generation=True).phases == memplan.estimate(**stage2).phases
