"""The ``memplan`` command line: tables, --json round trips, bad input → exit 2, shared options, imports.

Expected numbers come from the library itself (the CLI must add nothing): ``memplan.estimate`` on the
same request, ``memplan.catalog`` for the listings.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import memplan
from memplan import catalog
from memplan.cli.app import app
from memplan.cli.files import deepspeed_overrides
from memplan.cli.options import SHARED, build_request
from memplan.report import EstimateRequest, Report
from memplan.units import GiB

HEADLINE = ["--model", "meta-llama/Llama-2-7b-hf", "--algo", "ppo", "--gpus", "8xA100-40GB"]

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def flat(text: str) -> str:
    """Help text without rich's box characters and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_help_states_batch_semantics():
    for args in ([], ["estimate"], ["compare"]):
        out = flat(run(*args, "--help").output)
        assert "prompts per GPU in one generation call" in out, args
        assert "sequences per GPU in one forward/backward" in out, args
        assert "TRL's GRPO" in out and "verl's" in out


def test_every_request_field_has_an_option():
    # cuda_context_bytes is a GPU-catalog override for the API and tests; host RAM is --host-ram-gib
    fields = set(EstimateRequest.model_fields) - {"cuda_context_bytes", "host_ram_bytes_per_node"}
    assert fields <= set(SHARED), fields - set(SHARED)


def test_headline_table():
    result = run("estimate", *HEADLINE)
    assert result.exit_code == 0, result.output
    report = memplan.estimate(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB")
    verdict = {"fits": "FITS", "tight": "TIGHT", "does_not_fit": "DOES NOT FIT"}[report.verdict]
    out = result.stdout
    line = next(line for line in out.splitlines() if line.startswith(verdict))  # the verdict (and why), then the peak
    assert f"peak {report.peak_bytes_per_gpu / GiB:.2f} GiB" in line
    assert f"capacity {report.capacity_bytes / GiB:.2f} GiB" in out
    assert f"headroom {report.headroom_bytes / GiB:.2f} GiB" in out
    for phase in report.phases:
        assert phase.phase in out
        assert f"{phase.total_bytes / GiB:.2f}" in out  # the total row
    for role in ("actor", "critic", "reference", "reward"):
        assert role in out
    for item in report.deciding_terms:
        assert f"{item.bytes / GiB:.2f}" in out


def test_headline_json_round_trip():
    result = run("estimate", *HEADLINE, "--json")
    assert result.exit_code == 0, result.output
    report = Report.model_validate_json(result.stdout)
    assert report == memplan.estimate(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--model", "no-such/model-xyz"], "--model"),
        (["--model", "llama-2-7b", "--micro-batch-size", "-1"], "--micro-batch-size"),
        (["--model", "llama-2-7b", "--prompt-len", str(10**9)], "--prompt-len"),
        (["--model", "llama-2-7b", "--gpus", "0xA100-40GB"], "--gpus"),
        (["--model", "llama-2-7b", "--gpus", "8xB999-1GB"], "--gpus"),
        (["--model", "llama-2-7b", "--zero-stage", "4"], "--zero-stage"),
        (["--model", "llama-2-7b", "--vllm-gpu-memory-utilization", "1.5"], "--vllm-gpu-memory-utilization"),
        (["--model", "llama-2-7b", "--host-ram-gib", "-1"], "--host-ram-gib"),
        (["--model", "llama-2-7b", "--algo", "a2c"], "--algo"),  # click's own choice check
    ],
)
def test_bad_input_exit_2_names_the_option(args, option):
    result = run("estimate", *args)
    assert result.exit_code == 2, result.output
    assert option in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_range_is_stated():
    result = run("estimate", "--model", "llama-2-7b", "--prompt-len", str(10**9))
    # EstimateRequest.prompt_len: ge=1, le=MAX_TOKENS = 2**20
    assert result.stderr.strip() == (
        "error: --prompt-len: Input should be less than or equal to 1048576 (got 1000000000); "
        "allowed: 1 ≤ x ≤ 1048576"
    )


def test_deepspeed_config(tmp_path):
    # DeepSpeed-Chat's get_train_ds_config(offload=True, stage=2) shape, plus its hybrid engine block
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "none"}},
        "bf16": {"enabled": True},
        "hybrid_engine": {"enabled": True, "max_out_tokens": 512},
        "gradient_clipping": 1.0,
    }))
    assert deepspeed_overrides(path) == {
        "zero_stage": 2, "offload": "optimizer", "dtype": "bf16", "micro_batch_size": 4,
        "rollout_engine": "hybrid-engine",
    }
    options = {name: None for name in SHARED} | {"model": "llama-2-7b", "deepspeed_config": path}
    assert build_request(options).zero_stage == 2
    assert build_request(options | {"zero_stage": 3, "micro_batch_size": 1}).model_dump(
        include={"zero_stage", "micro_batch_size", "offload"}) == {
        "zero_stage": 3, "micro_batch_size": 1, "offload": "optimizer"}  # flags override the file

    result = run("estimate", "--model", "llama-2-7b", "--deepspeed-config", str(path), "--zero-stage", "3", "--json")
    assert result.exit_code == 0, result.output
    request = Report.model_validate_json(result.stdout).request
    assert (request.zero_stage, request.offload, request.rollout_engine) == (3, "optimizer", "hybrid-engine")


def test_deepspeed_config_fp16_and_auto(tmp_path):
    path = tmp_path / "ds.json"
    # HF Trainer's integration writes "auto" for values it fills in: skipped
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "fp16": {"enabled": True},
                                "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"},
                                                      "offload_optimizer": {"device": "cpu"}}}))
    assert deepspeed_overrides(path) == {"zero_stage": 3, "offload": "optimizer+params", "dtype": "fp16"}


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_bad_deepspeed_config(tmp_path, content):
    path = tmp_path / "ds.json"
    if content is not None:
        path.write_text(content)
    result = run("estimate", "--model", "llama-2-7b", "--deepspeed-config", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --deepspeed-config:")


def test_host_ram_gib():
    options = {name: None for name in SHARED} | {"model": "llama-2-7b", "host_ram_gib": 512}
    assert build_request(options).host_ram_bytes_per_node == 512 * 1024**3


def test_models_and_gpus():
    models = catalog.list_models(fixtures=False)  # the memplan/tiny-* test fixtures are not listed
    result = run("models", "--json")
    assert result.exit_code == 0, result.output
    assert [m["name"] for m in json.loads(result.stdout)] == [m.name for m in models]
    table = run("models").stdout
    assert "meta-llama/Llama-2-7b-hf" in table

    gpus = catalog.list_gpus()
    result = run("gpus", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(g["name"], g["memory_bytes"]) for g in data] == [(g.name, g.memory_bytes) for g in gpus]
    a100 = catalog.get_gpu("A100-40GB")
    assert f"{a100.memory_bytes / GiB:.2f}" in run("gpus").stdout


def test_compare():
    result = run("compare", *HEADLINE, "--algos", "ppo,remax", "--json")
    assert result.exit_code == 0, result.output
    reports = [Report.model_validate(r) for r in json.loads(result.stdout)]
    assert [r.request.algo for r in reports] == ["ppo", "remax"]
    expected = memplan.compare([EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo=a, gpus="8xA100-40GB")
                                for a in ("ppo", "remax")])
    assert reports == expected

    table = run("compare", *HEADLINE, "--algos", "ppo,remax").stdout
    ppo, remax = expected
    saving = 1 - remax.peak_bytes_per_gpu / ppo.peak_bytes_per_gpu
    assert f"{saving:.0%} less" in table or f"{-saving:.0%} more" in table


def test_compare_bad_algos():
    result = run("compare", *HEADLINE, "--algos", "ppo,a2c")
    assert result.exit_code == 2
    assert "--algos" in result.stderr and "a2c" in result.stderr


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        "import memplan\n"
        "assert 'torch' not in sys.modules, 'import memplan'\n"
        "from memplan.cli import main\n"
        "sys.argv = ['memplan', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "sys.argv = ['memplan', 'estimate', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'memplan --help'\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_missing_cli_extra_prints_install_hint():
    code = (
        "import sys\n"
        "sys.modules['typer'] = None  # as if memplan[cli] were not installed\n"
        "from memplan.cli import main\n"
        "main()\n"
    )
    proc = _python(code)
    assert proc.returncode == 2
    assert "pip install 'memplan[cli]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _fake_trace(request):
    from memplan.harness.records import PhaseTrace, TraceReport
    from memplan.report import Breakdown

    # a made-up trace: the CLI only lays it out
    phases = [
        PhaseTrace(phase="rollout", peak_bytes=3 * GiB, step=1, peak_op="mm",
                   breakdown=Breakdown(parameter=2 * GiB, kv_cache=GiB), items=[]),
        PhaseTrace(phase="actor_update", peak_bytes=5 * GiB, step=2, peak_op="_foreach_sqrt",
                   breakdown=Breakdown(parameter=2 * GiB, optstate=3 * GiB), items=[]),
    ]
    return TraceReport(request=request, peak_bytes=5 * GiB, peak_phase="actor_update", phases=phases,
                       seconds=1.5, notes=["fake"])


def test_trace_command_layout(monkeypatch):
    import memplan.harness

    monkeypatch.setattr(memplan.harness, "trace", _fake_trace, raising=False)
    result = run("trace", "--model", "llama-2-7b", "--algo", "grpo")
    assert result.exit_code == 0, result.output
    assert "5.00" in result.stdout and "_foreach_sqrt" in result.stdout and "estimate ÷ traced" in result.stdout
    result = run("trace", "--model", "llama-2-7b", "--algo", "grpo", "--json")
    from memplan.harness.records import TraceReport

    assert TraceReport.model_validate_json(result.stdout).peak_bytes == 5 * GiB


def test_missing_torch_is_exit_2(monkeypatch):
    import memplan.harness
    from memplan.errors import EnvironmentProblem

    def no_torch(request, **kwargs):
        raise EnvironmentProblem("tracing needs torch: pip install 'memplan[measure]'")

    monkeypatch.setattr(memplan.harness, "trace", no_torch, raising=False)
    monkeypatch.setattr(memplan.harness, "measure", no_torch, raising=False)
    for command in ("trace", "measure"):
        result = run(command, "--model", "llama-2-7b")
        assert result.exit_code == 2, result.output
        assert "memplan[measure]" in result.stderr and "Traceback" not in result.output


DSCHAT = "tests/data/dschat_minimal.sh"


@pytest.mark.parametrize("command", ["estimate", "plan", "compare", "time"])
def test_deepspeed_chat_command_is_read_as_verl_scripts_are(command):
    """--deepspeed-chat reads a step-3 launch command with memplan.frameworks.dschat (as --verl reads a verl
    script): the request is the reader's, on the --gpus cluster, explicit flags on top."""
    from memplan.frameworks import dschat

    want = EstimateRequest(**dschat.load(DSCHAT, "8xA100-80GB").fields)
    request = build_request({"deepspeed_chat": DSCHAT, "gpus": "8xA100-80GB"})
    assert request == want and request.rollout_engine == "hybrid-engine"
    assert build_request({"deepspeed_chat": DSCHAT, "gpus": "8xA100-80GB", "algo": "remax",
                          "micro_batch_size": 2}).model_dump() == {**want.model_dump(), "algo": "remax",
                                                                  "micro_batch_size": 2}
    extra = ["--algos", "ppo,remax"] if command == "compare" else []
    result = run(command, "--deepspeed-chat", DSCHAT, "--gpus", "8xA100-80GB", *extra, "--help" if command == "plan"
                 else "--json")
    assert result.exit_code == 0, result.output
    if command == "plan":
        assert "--deepspeed-chat" in result.stdout
    elif command == "estimate":
        assert Report.model_validate_json(result.stdout).request == want


def test_deepspeed_chat_needs_the_cluster_and_one_framework():
    no_count = run("estimate", "--deepspeed-chat", DSCHAT, "--gpus", "A100-80GB")
    assert no_count.exit_code == 2 and "--gpus" in no_count.stderr and "8xA100-80GB" in no_count.stderr
    both = run("estimate", "--deepspeed-chat", DSCHAT, "--verl", DSCHAT, "--gpus", "8xA100-80GB")
    assert both.exit_code == 2 and "--deepspeed-chat" in both.stderr
    grpo = run("estimate", "--deepspeed-chat", DSCHAT, "--gpus", "8xA100-80GB", "--algo", "grpo")
    assert grpo.exit_code == 2 and "--algo" in grpo.stderr  # step 3 trains PPO or ReMax only


def test_deepspeed_chat_api_route_takes_text_only():
    from fastapi.testclient import TestClient

    from api.main import app as api_app

    client = TestClient(api_app)
    text = open(DSCHAT).read()
    ok = client.post("/v1/deepspeed-chat/estimate", json={"script": text, "gpus": "8xA100-80GB", "algo": "remax"})
    assert ok.status_code == 200, ok.text
    assert (ok.json()["request"]["algo"], ok.json()["report"]["num_gpus"]) == ("remax", 8)
    path = client.post("/v1/deepspeed-chat/estimate", json={"script": DSCHAT, "gpus": "8xA100-80GB"})
    assert path.status_code == 422  # a path is text without --key value arguments: never opened
    assert path.json()["detail"][0]["loc"] == ["body", "script"]
    no_count = client.post("/v1/deepspeed-chat/estimate", json={"script": text, "gpus": "A100-80GB"})
    assert no_count.status_code == 422 and no_count.json()["detail"][0]["loc"] == ["body", "gpus"]
