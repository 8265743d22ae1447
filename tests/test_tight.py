"""memplan's error band and the TIGHT verdict (issue 16, section 5): the band worked by hand, the verdicts of the
headline Llama-2-7B runs recomputed from the band file's own numbers, the planner skipping TIGHT unless allowed,
and the same verdict in the CLI and the API.

Expected verdicts are never typed in: each is worked here from memplan/catalog/error_band.json (whatever numbers
``python benchmarks/corpus/error_band.py`` last wrote) and the report's phase totals, by the rule the band module
states (``memplan.estimator.band``).
"""

from __future__ import annotations

import json
import math
from functools import cache

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import memplan
from api.main import create_app
from memplan.cli.app import app
from memplan.estimator import band
from memplan.comparison import compare_algorithms
from memplan.planner import batch_limit, gpu_limit, max_micro_batch_size, plan
from memplan.report import EstimateRequest, Report
from memplan.validate import load_corpus, percentile, validate

BAND = json.loads(band.BAND_FILE.read_text())

# The headline run (README, tests/test_planner.py::REMAX): Llama-2-7B in the ReMax paper's setup, ReMax, on
# 8×A100-80GB so that micro batch 1 sits far under capacity; its peak grows ~1.2 GiB per sequence.
HEADLINE = dict(
    model="meta-llama/Llama-2-7b-hf", algo="remax", gpus="8xA100-80GB", actor_zero_stage=2, critic_zero_stage=2,
    ref_zero_stage=3, reward_zero_stage=3, offload_ref=True, offload_reward=True, dtype="bf16",
    gradient_checkpointing=True, rollout_engine="hybrid-engine", prompt_len=256, gen_len=256, micro_batch_size=1,
)


def headline(**update) -> EstimateRequest:
    return EstimateRequest(**{**HEADLINE, **update})


def expected(report: Report) -> tuple[str, int, int]:
    """The verdict and the peak's band, worked from the band file: this run (8 GPUs, DeepSpeed, full fine-tuning)
    is outside the corpus' configurations, so every phase is an extrapolation — its low end the lowest measured
    over the kinds, part by part (relative and bytes), its high end its kind's, both parts (band module
    docstring)."""
    low = high = 0
    w = BAND["widest"]
    for ph in report.phases:
        k = BAND["kinds"]["rollout" if ph.phase == "rollout" else "training"]
        low = max(low, int(ph.total_bytes * (1 + w["lower"])) + w["lower_bytes"])
        high = max(high, int(ph.total_bytes * (1 + k["upper"])) + k["upper_bytes"])
    cap, peak = report.capacity_bytes, report.peak_bytes_per_gpu
    if peak <= cap and high <= cap:
        return "fits", low, high
    if peak > cap and low > cap:
        return "does_not_fit", low, high
    return "tight", low, high


@cache
def point_limit() -> int:
    """The largest micro batch whose point estimate fits (the search that counts TIGHT): its peak sits just
    under capacity."""
    n = max_micro_batch_size(headline(), allow_tight=True)
    assert n is not None and n > 2
    return n


def three_runs() -> dict[str, EstimateRequest]:
    n = point_limit()
    return {"far under": headline(micro_batch_size=1), "just under": headline(micro_batch_size=n),
            "far over": headline(micro_batch_size=2 * n)}


# --- the band itself ---------------------------------------------------------------------------------------

def test_residual_band_by_hand():
    # 20 residuals (measured - estimated) / estimated, shuffled. Nearest rank: p5 is the smallest value with at
    # least 5 % of the 20 at or below it: ceil(0.05 × 20) = 1st smallest = -0.08; p95: ceil(0.95 × 20) = 19th
    # smallest = +0.30 (one value, +0.61, lies above it)
    residuals = [0.02, -0.08, 0.10, 0.30, 0.05, -0.01, 0.12, 0.61, 0.07, 0.00,
                 0.03, 0.04, 0.09, -0.03, 0.15, 0.20, 0.06, 0.01, 0.11, 0.08]
    assert band.residual_band(residuals, 0.05, 0.95) == (-0.08, 0.30)
    # 10th and 90th: ceil(2) = 2nd smallest -0.03; ceil(18) = 18th smallest +0.20 (sorted: ... +0.12, +0.15,
    # +0.20, +0.30, +0.61)
    assert band.residual_band(residuals, 0.10, 0.90) == (-0.03, 0.20)
    ordered = sorted(residuals)
    assert band.residual_band(residuals, 0.05, 0.95) == (percentile(ordered, 0.05), percentile(ordered, 0.95))


def test_band_file_says_where_it_comes_from():
    prov = BAND["provenance"]
    assert prov["command"] == "python benchmarks/corpus/error_band.py"
    assert prov["date"] and len(prov["memplan_commit"]) == 40
    assert prov["corpus"] and all(len(f["sha256"]) == 64 and f["records"] > 0 for f in prov["corpus"])
    assert prov["points"] == sum(k["n"] for k in BAND["kinds"].values())
    assert BAND["quantiles"] == [0.05, 0.95]
    for kind in BAND["kinds"].values():
        # the kept form is the one with the smallest held-out pinball loss, and its numbers are that form's fit
        forms = kind["forms"]
        assert kind["form"] == min(forms, key=lambda f: forms[f]["held_out_pinball_bytes_per_point"])
        assert {k: kind[k] for k in ("lower", "lower_bytes", "upper", "upper_bytes")} == {
            k: forms[kind["form"]][k] for k in ("lower", "lower_bytes", "upper", "upper_bytes")}
        assert forms["relative"]["lower_bytes"] == forms["relative"]["upper_bytes"] == 0
        assert forms["bytes"]["lower"] == forms["bytes"]["upper"] == 0
        rel, by = kind["relative"], kind["bytes"]
        assert rel["min"] <= forms["relative"]["lower"] <= rel["median"] <= forms["relative"]["upper"] <= rel["max"]
        assert by["min"] <= forms["bytes"]["lower_bytes"] <= by["median"] <= forms["bytes"]["upper_bytes"] <= by["max"]
    for end, pick in (("lower", min), ("lower_bytes", min), ("upper", max), ("upper_bytes", max)):
        assert BAND["widest"][end] == pick(k[end] for k in BAND["kinds"].values())


def test_band_file_is_todays():
    """The band matches today's residuals (the relative forms within 1 percentage point, the bytes forms within
    64 MiB): after a change that moves ``memplan validate``'s errors, re-run
    ``python benchmarks/corpus/error_band.py``."""
    records = load_corpus()
    summary = validate(records)
    for kind, phases in band.KINDS.items():
        points = [(r.estimated_bytes, r.compared_bytes - r.estimated_bytes)
                  for rec, r in zip(records, summary.results) if r.error is not None and set(rec.phases) <= set(phases)]
        if kind not in BAND["kinds"]:
            assert not points, f"{kind}: the corpus has points now; re-run benchmarks/corpus/error_band.py"
            continue
        k = BAND["kinds"][kind]
        assert len(points) == k["n"], "re-run benchmarks/corpus/error_band.py"
        lower, upper = band.residual_band([d / t for t, d in points], *BAND["quantiles"])
        assert abs(lower - k["forms"]["relative"]["lower"]) <= 0.01, "re-run benchmarks/corpus/error_band.py"
        assert abs(upper - k["forms"]["relative"]["upper"]) <= 0.01, "re-run benchmarks/corpus/error_band.py"
        lower, upper = band.residual_band([d for _, d in points], *BAND["quantiles"])
        assert abs(lower - k["forms"]["bytes"]["lower_bytes"]) <= 64 << 20, "re-run benchmarks/corpus/error_band.py"
        assert abs(upper - k["forms"]["bytes"]["upper_bytes"]) <= 64 << 20, "re-run benchmarks/corpus/error_band.py"


def test_covered_run_takes_its_kinds_band_and_an_unmeasured_phase_the_widest():
    # an AgileRL-like run (one GPU, plain PyTorch, LoRA GRPO, colocated vLLM): inside the corpus
    grpo = memplan.estimate(model="Qwen/Qwen2.5-1.5B-Instruct", algo="grpo", gpus="1xA100-40GB", engine="torch",
                            lora_rank=16, group_size=4, rollout_engine="vllm", vllm_gpu_memory_utilization=0.45,
                            gradient_checkpointing=True)
    by_phase = {b.phase: b for b in grpo.phase_bands}
    assert [b.phase for b in grpo.phase_bands] == [p.phase for p in grpo.phases]
    ends = ("lower", "lower_bytes", "upper", "upper_bytes")
    for phase, kind in (("rollout", "rollout"), ("actor_update", "training")):
        assert tuple(getattr(by_phase[phase], e) for e in ends) == tuple(BAND["kinds"][kind][e] for e in ends)
    assert by_phase["rollout"].basis == "rollout" and by_phase["actor_update"].basis == "training"
    for p in grpo.phases:
        b = by_phase[p.phase]
        assert (b.low_bytes, b.high_bytes) == (int(p.total_bytes * (1 + b.lower)) + b.lower_bytes,
                                               int(p.total_bytes * (1 + b.upper)) + b.upper_bytes)
    assert grpo.peak_band_bytes == (max(b.low_bytes for b in grpo.phase_bands),
                                    max(b.high_bytes for b in grpo.phase_bands))
    assert not any(n.startswith("error band extrapolated") for n in grpo.notes)
    # the same run under PPO: a critic, an algorithm the corpus never ran: every phase extrapolated, and said so
    ppo = memplan.estimate(grpo.request.model_copy(update={"algo": "ppo", "group_size": None}))
    critic = next(b for b in ppo.phase_bands if b.phase == "critic_update")
    assert critic.basis.startswith("extrapolated") and "algo=ppo" in critic.basis
    assert (critic.lower, critic.lower_bytes) == (BAND["widest"]["lower"], BAND["widest"]["lower_bytes"])
    assert (critic.upper, critic.upper_bytes) == (BAND["kinds"]["training"]["upper"],
                                                  BAND["kinds"]["training"]["upper_bytes"])
    assert any(n.startswith("error band extrapolated (no corpus points with algo=ppo)") for n in ppo.notes)


def test_the_estimate_gets_no_margin():
    # the band sits beside the estimate: the peak and every phase total are the same with any band
    report = memplan.estimate(headline())
    assert report.peak_bytes_per_gpu == max(p.total_bytes for p in report.phases)
    assert report.headroom_bytes == report.capacity_bytes - report.peak_bytes_per_gpu


# --- the verdict -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["far under", "just under", "far over"])
def test_headline_verdicts_from_the_band_file(where):
    report = memplan.estimate(three_runs()[where])
    verdict, low, high = expected(report)
    print(f"\n{where}: micro batch {report.request.micro_batch_size}, peak {report.peak_bytes_per_gpu / 2**30:.2f} "
          f"GiB, band {low / 2**30:.2f}-{high / 2**30:.2f} of {report.capacity_bytes / 2**30:.2f}: {verdict}")
    assert report.verdict == verdict
    assert report.peak_band_bytes == (low, high)
    assert report.fits == (report.peak_bytes_per_gpu <= report.capacity_bytes)  # the point estimate's, unchanged
    tight = [r for r in report.reasons if r.startswith("tight:")]
    assert bool(tight) == (verdict == "tight")
    if tight:
        assert (f"the peak {report.peak_bytes_per_gpu / 2**30:.2f} GiB could be {low / 2**30:.2f}–{high / 2**30:.2f} "
                f"GiB on a real GPU (corpus residuals p5–p95, extrapolated), capacity "
                f"{report.capacity_bytes / 2**30:.2f} GiB") in tight[0]


def test_the_three_runs_are_the_three_verdicts():
    # the construction holds with the band file as it stands: far under FITS, the point estimate's limit TIGHT
    # (its peak within the band of capacity), twice that DOES NOT FIT
    got = {where: expected(memplan.estimate(r))[0] for where, r in three_runs().items()}
    assert got == {"far under": "fits", "just under": "tight", "far over": "does_not_fit"}


def test_tight_over_capacity_whose_band_reaches_under_it():
    # one sequence past the point estimate's limit: the point estimate does not fit, its band's low end does
    report = memplan.estimate(headline(micro_batch_size=point_limit() + 1))
    verdict, low, _ = expected(report)
    assert not report.fits and verdict == report.verdict
    if low <= report.capacity_bytes:
        assert report.verdict == "tight" and report.reasons[0].startswith("GPU memory: the peak")


def test_verdict_and_fits_agree_where_they_must():
    # over a sweep of micro batches, lengths and GPUs: FITS implies fits, DOES NOT FIT implies not, and the
    # reasons are empty exactly when the verdict is FITS
    for gpus in ("8xA100-40GB", "8xA100-80GB", "1xA100-80GB"):
        for mb in (1, 4, 16, 64):
            r = memplan.estimate(headline(gpus=gpus, micro_batch_size=mb, offload="optimizer"))
            assert r.verdict == expected(r)[0]
            assert (r.verdict != "fits" or r.fits) and (r.verdict != "does_not_fit" or not r.fits)
            assert (not r.reasons) == (r.verdict == "fits")


def test_host_ram_failure_is_does_not_fit_whatever_the_band():
    r = memplan.estimate(headline(micro_batch_size=1, offload="optimizer", host_ram_bytes_per_node=1 << 30))
    assert r.gpu_fits and not r.host_fits and r.verdict == "does_not_fit"


# --- the planner -------------------------------------------------------------------------------------------

def test_planner_skips_tight_unless_allowed():
    request = headline(micro_batch_size=point_limit())  # TIGHT as given
    assert memplan.estimate(request).verdict == "tight"
    strict = plan(request)
    assert strict.mode == "fix" and not strict.allow_tight
    assert strict.fits_any and all(c.verdict == "fits" for c in strict.candidates)
    loose = plan(request, allow_tight=True)
    assert loose.mode == "relax" and loose.allow_tight and loose.as_given.verdict == "tight"
    assert loose.fits_any and all(c.fits for c in loose.candidates)


def test_max_batch_and_min_gpus_take_fits_only_by_default():
    n = max_micro_batch_size(headline())
    assert n is not None and n < point_limit()
    assert memplan.estimate(headline(micro_batch_size=n)).verdict == "fits"
    assert memplan.estimate(headline(micro_batch_size=n + 1)).verdict != "fits"
    limit = batch_limit(headline())
    assert limit.max_micro_batch_size == n and limit.at_limit.verdict == "fits" and not limit.allow_tight
    assert limit.past_limit.verdict != "fits"
    assert batch_limit(headline(), allow_tight=True).max_micro_batch_size == point_limit()
    # the fewest GPUs: FITS at the answer, not at the count before it; never fewer with TIGHT counted
    request = headline(gpus="1xA100-80GB", actor_zero_stage=3, critic_zero_stage=3, micro_batch_size=8)
    strict, loose = gpu_limit(request), gpu_limit(request, allow_tight=True)
    assert strict.found and strict.at_limit.verdict == "fits"
    assert strict.past_limit is None or strict.past_limit.verdict != "fits"
    assert loose.min_gpus <= strict.min_gpus


def test_compare_rows_carry_the_verdict():
    result = compare_algorithms(headline(micro_batch_size=point_limit()), ("ppo", "remax"))
    for row in result.rows:
        report = memplan.estimate(headline(algo=row.algo, micro_batch_size=point_limit()))
        assert (row.fits, row.verdict) == (report.fits, report.verdict)


# --- CLI and API -------------------------------------------------------------------------------------------

def flags(request: EstimateRequest) -> list[str]:
    return ["--model", request.model, "--algo", request.algo, "--gpus", request.gpus, "--actor-zero-stage", "2",
            "--critic-zero-stage", "2", "--ref-zero-stage", "3", "--reward-zero-stage", "3", "--offload-ref",
            "--offload-reward", "--gradient-checkpointing", "--rollout-engine", "hybrid-engine", "--prompt-len",
            "256", "--gen-len", "256", "--micro-batch-size", str(request.micro_batch_size)]


@pytest.mark.parametrize("where", ["far under", "just under", "far over"])
def test_cli_estimate_verdict_line_and_exit_code(where):
    request = three_runs()[where]
    report = memplan.estimate(request)
    runner = CliRunner()
    result = runner.invoke(app, ["estimate", *flags(request)], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output  # every verdict is an answer; bad input alone exits 2
    word = {"fits": "FITS", "tight": "TIGHT", "does_not_fit": "DOES NOT FIT"}[report.verdict]
    low, high = report.peak_band_bytes
    assert (f"{word}  peak {report.peak_bytes_per_gpu / 2**30:.2f} GiB per GPU" in result.stdout
            and f"(on a real GPU {low / 2**30:.2f}–{high / 2**30:.2f}: memplan's error band)" in result.stdout)
    assert ("What to try next" in result.stdout) == (report.verdict != "fits")
    data = json.loads(runner.invoke(app, ["estimate", *flags(request), "--json"]).stdout)
    assert data["verdict"] == report.verdict and data["fits"] == report.fits
    assert tuple(data["peak_band_bytes"]) == report.peak_band_bytes
    assert [b["phase"] for b in data["phase_bands"]] == [p.phase for p in report.phases]


def test_cli_plan_allow_tight():
    request = headline(micro_batch_size=point_limit())
    runner = CliRunner()
    strict = json.loads(runner.invoke(app, ["plan", *flags(request), "--json"]).stdout)
    loose = json.loads(runner.invoke(app, ["plan", *flags(request), "--allow-tight", "--json"]).stdout)
    assert (strict["mode"], strict["allow_tight"], loose["mode"], loose["allow_tight"]) == ("fix", False, "relax", True)
    out = runner.invoke(app, ["plan", *flags(request), "--max-batch"], env={"COLUMNS": "240"})
    assert out.exit_code == 0 and f"Largest micro batch per GPU that fits: {max_micro_batch_size(request)}" in out.stdout
    out = runner.invoke(app, ["plan", *flags(request), "--max-batch", "--allow-tight"], env={"COLUMNS": "240"})
    assert out.exit_code == 0 and f"Largest micro batch per GPU that fits: {point_limit()}" in out.stdout


def test_api_report_and_plan_allow_tight():
    client = TestClient(create_app())
    request = headline(micro_batch_size=point_limit())
    body = request.model_dump(mode="json", exclude_defaults=True)
    report = memplan.estimate(request)
    r = client.post("/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["verdict"], data["fits"]) == (report.verdict, report.fits) == ("tight", True)
    assert tuple(data["peak_band_bytes"]) == report.peak_band_bytes and len(data["phase_bands"]) == len(report.phases)
    assert any(reason.startswith("tight:") for reason in data["reasons"])
    strict = client.post("/v1/plan", json={"request": body, "max_results": 3}).json()
    loose = client.post("/v1/plan", json={"request": body, "max_results": 3, "allow_tight": True}).json()
    assert (strict["mode"], loose["mode"]) == ("fix", "relax")
    limit = client.post("/v1/plan/max-batch", json={"request": body, "allow_tight": True}).json()
    assert limit["max_micro_batch_size"] == point_limit() and limit["allow_tight"] is True
    assert client.post("/v1/plan/min-gpus", json={"request": body}).json()["allow_tight"] is False
    bad = client.post("/v1/plan", json={"request": body, "allow_tight": "yes"})
    assert bad.status_code == 422 and "allow_tight" in bad.text
    compared = client.post("/v1/compare", json={"base": body, "algos": ["remax", "ppo"]}).json()
    assert [c["verdict"] for c in compared] == [memplan.estimate(request.model_copy(update={"algo": a})).verdict
                                                for a in ("remax", "ppo")]


def test_band_lookup_is_cached_per_configuration():
    # the hot path: one dictionary of bands per configuration, a few multiplications per phase
    report = memplan.estimate(headline())
    from memplan.estimator.resolve import resolve

    config = band.configuration(report.request, resolve(report.request))
    assert band.bands(config) is band.bands(config)
    assert math.isclose(band.bands(config)["actor_update"].upper, BAND["kinds"]["training"]["upper"])
    assert band.bands(config)["actor_update"].upper_bytes == BAND["kinds"]["training"]["upper_bytes"]


def test_coverage_is_of_whole_configurations_not_of_each_dimension():
    """The corpus measured LoRA GRPO with vLLM on one GPU, and one full-fine-tuning SFT step (torchtune): each
    dimension's value appears somewhere, but a full-fine-tuning GRPO run with vLLM was never measured, so its band
    is an extrapolation, and the note names what sets it apart from the nearest measured configuration."""
    data = band.load()
    assert ["sft", "torch", "single", "hf", "full", "colocated", "bf16", "none"] in data["configurations"]["training"]
    assert "full" in data["covered"]["finetune"] and "vllm" in data["covered"]["rollout_engine"]
    report = memplan.estimate(model="Qwen/Qwen2.5-0.5B-Instruct", algo="grpo", gpus="1xA100-40GB", engine="torch",
                              group_size=4, rollout_engine="vllm", vllm_gpu_memory_utilization=0.3)
    bases = {b.phase: b.basis for b in report.phase_bands}
    assert all(basis.startswith("extrapolated") for basis in bases.values()), bases
    assert "finetune=full" in bases["actor_update"] and "finetune=full" in bases["rollout"]
    lora = memplan.estimate(model="Qwen/Qwen2.5-0.5B-Instruct", algo="grpo", gpus="1xA100-40GB", engine="torch",
                            group_size=4, rollout_engine="vllm", vllm_gpu_memory_utilization=0.3, lora_rank=8)
    assert {b.phase: b.basis for b in lora.phase_bands}["actor_update"] == "training"
