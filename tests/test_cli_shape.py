"""The command line a person meets: output into files and pipes, --help, one error shape, what to try next,
the model listing, ``serve``'s address.

CliRunner's stdout is not a terminal, as a file, a pipe or a CI log is not. Expected values come from the
library (``memplan.estimate``, ``memplan.planner.plan``, ``memplan.catalog``); the CLI must add nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket

import pytest
from typer.testing import CliRunner

import memplan
from memplan import catalog
from memplan.cli import render
from memplan.cli.app import app
from memplan.cli.options import SHARED
from memplan.planner import KNOBS, plan
from memplan.report import EstimateRequest
from memplan.units import GiB

runner = CliRunner()
HEADLINE = ["--model", "meta-llama/Llama-2-7b-hf", "--algo", "ppo", "--gpus", "8xA100-40GB",
            "--zero-stage", "0"]  # unsharded replicas (the default before zero_stage became automatic): does not fit
# PPO whose roles carry long model names, split over GPU groups: the widest table cells memplan prints
LONG_ROLES = ["--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "--critic-model", "Qwen/Qwen2.5-1.5B-Instruct",
              "--reward-model", "Qwen/Qwen2.5-0.5B-Instruct", "--algo", "ppo", "--gpus", "8xA100-40GB",
              "--placement", "split", "--split-groups", "actor+reference,critic+reward", "--zero-stage", "2"]


def run(*args: str, **env: str | None):
    # COLUMNS and TERMINAL_WIDTH unset: what a pipe gets when nobody sets them
    return runner.invoke(app, list(args), env={"COLUMNS": None, "TERMINAL_WIDTH": None, **env})


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def request_of(args: list[str]) -> EstimateRequest:
    pairs = dict(zip(args[::2], args[1::2]))
    fields = {k.removeprefix("--").replace("-", "_"): int(v) if v.isdigit() else v for k, v in pairs.items()}
    if "split_groups" in fields:
        fields["split_groups"] = tuple(tuple(g.split("+")) for g in fields["split_groups"].split(","))
    return EstimateRequest(**fields)


# ------------------------------------------------------------------------------- 12: not a terminal


@pytest.mark.parametrize(("args", "env"), [(HEADLINE, {}), (LONG_ROLES, {}), (HEADLINE, {"FORCE_COLOR": "1"})],
                         ids=["headline", "long-roles", "headline-ci-colors"])
def test_tables_into_a_pipe_are_whole(args, env):
    result = run("estimate", *args, **env)
    assert result.exit_code == 0, result.output
    out = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # a CI log with colors: the same text
    assert "…" not in out  # rich's mark for a cut cell
    lines = out.splitlines()
    report = memplan.estimate(request_of(args))
    # the verdict, its numbers and the capacity on one line
    verdict = next(line for line in lines if line.startswith(("FITS", "DOES NOT FIT")))
    for number in (report.peak_bytes_per_gpu, report.capacity_bytes, report.headroom_bytes):
        assert f"{number / GiB:.2f} GiB" in verdict
    # each resident model's row whole on one line: role, model name, resident GiB
    for m in report.models:
        row = next(line for line in lines if line.startswith(f"│ {m.role} "))
        assert m.name in row and f"{m.resident.total / GiB:.2f}" in row, row
    # headers and the phase columns unbroken
    header = next(line for line in lines if "role" in line and "resident GiB" in line)
    assert "host GiB" in header
    assert any(f"{report.peak_phase} (peak)" in line for line in lines)
    # the deciding terms' reasons not wrapped
    for item in report.deciding_terms:
        assert any(item.note in line and f"{item.bytes / GiB:.2f}" in line for line in lines), item.note


def test_compare_and_plan_into_a_pipe_are_whole():
    result = run("compare", *HEADLINE, "--algos", "ppo,grpo,remax,rloo,dpo")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    assert any("actor, critic, reference, reward" in line and "ppo" in line for line in result.stdout.splitlines())
    result = run("plan", *HEADLINE)
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout


# ------------------------------------------------------------------------------------- 14: --help


PANELS = {  # option → the --help panel it is listed in
    "--model": "Model", "--critic-model": "Model", "--verl": "Read the run from a framework's files",
    "--deepspeed-config": "Read the run from a framework's files", "--gpus": "Cluster", "--host-ram-gib": "Cluster",
    "--algo": "Algorithm", "--ref": "Algorithm", "--group-size": "Algorithm", "--dtype": "Training",
    "--lora-rank": "Training", "--zero-stage": "Sharding and placement", "--offload": "Sharding and placement",
    "--split-groups": "Sharding and placement", "--micro-batch-size": "Batch and lengths",
    "--gen-len": "Batch and lengths", "--rollout-engine": "Rollout", "--vllm-gpu-memory-utilization": "Rollout",
    "--json": "Output",
}


def panels_of(help_text: str) -> dict[str, str]:
    """Option → the panel (╭─ Title ─╮ box) that lists it."""
    where, panel = {}, None
    for line in help_text.splitlines():
        if title := re.match(r"╭─ (.+?) ─", line):
            panel = title.group(1)
        elif option := re.match(r"│ (--[a-z0-9-]+)", line):
            where[option.group(1)] = panel
    return where


def test_estimate_help_is_grouped():
    result = run("estimate", "--help")
    assert result.exit_code == 0, result.output
    where = panels_of(result.stdout)
    for option, panel in PANELS.items():
        assert where.get(option) == panel, (option, where.get(option))
    shared = {"--" + name.replace("_", "-") for name in SHARED}
    assert shared <= set(where), shared - set(where)
    assert all(where[o] != "Options" for o in shared)  # none left in the catch-all block
    assert "…" not in result.stdout  # no option name cut in a pipe


def test_help_shows_brackets():
    out = flat(run("estimate", "--help").stdout)
    assert "e.g. [[actor, reference], [critic, reward]]" in out


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"memplan {memplan.__version__}\n"


# ---------------------------------------------------------------------------------- 15: errors


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    (d / "latin1.json").write_bytes(b'{"bf16": {"enabled": true}, "note": "caf\xe9"}')
    (d / "empty.yaml").write_text("")
    (d / "big.sh").write_text("#" * (2 << 20))
    fifo = d / "fifo"
    os.mkfifo(fifo)
    return d


M = ["--model", "llama-2-7b"]
BAD = [  # (arguments, the option the error names, words the message holds)
    ([*M, "--algo", "foo"], "--algo", "'foo' is not one of the choices; allowed: ppo | grpo | remax | rloo | dpo | sft"),
    ([*M, "--gen-len", "nan"], "--gen-len", "'nan' is not an integer; allowed: 1 ≤ x"),
    ([*M, "--dtype", "int3"], "--dtype", "allowed: bf16 | fp16 | fp32"),
    ([*M, "--host-ram-gib", "lots"], "--host-ram-gib", "'lots' is not a number"),
    ([*M, "--offload-ref=3"], "--offload-ref", "takes no value"),
    ([*M, "--deepspeed-config", "{dir}"], "--deepspeed-config", "is a directory"),
    ([*M, "--deepspeed-config", "{dir}/latin1.json"], "--deepspeed-config", "not UTF-8"),
    ([*M, "--deepspeed-config", "{dir}/empty.yaml"], "--deepspeed-config", "is empty"),
    ([*M, "--deepspeed-config", "/dev/zero"], "--deepspeed-config", "not a regular file"),
    ([*M, "--deepspeed-config", "{dir}/missing.json"], "--deepspeed-config", "No such file"),
    (["--verl", "{dir}", "--gpus", "H100-80GB"], "--verl", "is a directory"),
    (["--verl", "{dir}/fifo", "--gpus", "H100-80GB"], "--verl", "not a regular file"),
    (["--openrlhf", "{dir}/big.sh", "--gpus", "H100-80GB"], "--openrlhf", "over 1 MiB"),
    (["--trl", "{dir}/latin1.json", "--gpus", "H100-80GB"], "--trl", "not UTF-8"),
    (["--trl", "{dir}/empty.yaml", "--accelerate-config", "/dev/zero", "--gpus", "H100-80GB"], "--trl", "is empty"),
    (["--model"], "--model", "needs a value"),
    ([], "--model", "missing; allowed: a catalog name"),
    ([*M, "--no-such-flag"], "--no-such-flag", "no such option"),
    ([*M, "--zero-stag", "2"], "--zero-stag", "did you mean"),
    ([*M, "stray"], "stray", "unexpected argument"),
]


@pytest.mark.parametrize(("args", "option", "words"), BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_one_error_shape(files, args, option, words):
    args = [a.replace("{dir}", str(files)) for a in args]
    result = run("estimate", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert result.stderr.startswith(f"error: {option}: "), result.stderr
    assert words in result.stderr, result.stderr
    for box in ("╭", "Usage:", "Traceback"):
        assert box not in result.output


@pytest.mark.parametrize(("args", "start"), [
    (["estimat"], "error: estimat: no such command (did you mean estimate?)"),
    (["--bogus"], "error: --bogus: no such option"),
    (["serve", "--port", "0"], "error: --port: Input should be greater than or equal to 1; allowed: 1 ≤ x ≤ 65535"),
    (["plan", *M, "--max-results", "many"], "error: --max-results: 'many' is not an integer"),
    (["compare", *M, "--algos"], "error: --algos: needs a value"),
])
def test_one_error_shape_everywhere(args, start):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(start) and result.stderr.count("\n") == 1, result.stderr
    assert "╭" not in result.output


# ----------------------------------------------------------------------------- 16: what next


def test_estimate_that_does_not_fit_ends_with_what_to_try():
    result = run("estimate", *HEADLINE)
    assert result.exit_code == 0, result.output
    request = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB", zero_stage=0)
    assert not memplan.estimate(request).fits  # ZeRO-0 everywhere: 7B PPO cannot fit on 40 GB
    found = plan(request, allow=set(KNOBS), max_results=3)
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("What to try next"))
    tail = lines[start:]
    for i, c in enumerate(found.candidates, 1):
        assert tail[i] == (f"  {i}. {render.changes(c.changes)}: peak {c.peak_bytes_per_gpu / GiB:.2f} GiB per GPU, "
                           f"headroom {c.headroom_bytes / GiB:.2f} GiB")
    command = "memplan plan --model meta-llama/Llama-2-7b-hf --gpus 8xA100-40GB --algo ppo --zero-stage 0"
    assert tail[-1] == f"Every option, its cost and why: {command}"
    # the line runs as printed
    again = run(*shlex.split(command)[1:])
    assert again.exit_code == 0, again.output
    assert render.changes(found.candidates[0].changes) in again.stdout


def test_when_nothing_fits_it_asks_for_the_fewest_gpus_with_the_closest_setting():
    args = ["--model", "meta-llama/Llama-3.1-70B", "--algo", "ppo", "--gpus", "1xT4", "--host-ram-gib", "8"]
    result = run("estimate", *args)
    assert result.exit_code == 0, result.output
    request = EstimateRequest(model="meta-llama/Llama-3.1-70B", algo="ppo", gpus="1xT4", host_ram_bytes_per_node=8 * GiB)
    found = plan(request, allow=set(KNOBS), max_results=3)
    assert not found.fits_any  # 8 GiB of host RAM: no knob makes one T4 enough
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("What to try next: no setting the planner may change fits on these GPUs (closest: "
                                f"{render.changes(found.candidates[0].changes)}; ")
    command = lines[-1].strip()
    assert command.startswith("memplan plan --model meta-llama/Llama-3.1-70B --gpus 1xT4") and command.endswith(
        " --min-gpus")
    again = run(*shlex.split(command)[1:])  # runs as printed, and finds a count
    assert again.exit_code == 0, again.output
    assert re.search(r"Fewest GPUs that fit: \d+", again.stdout), again.stdout


def test_the_plan_line_carries_every_option_given():
    args = [*HEADLINE, "--zero-stage", "1", "--ref-zero-stage", "3", "--offload-ref", "--no-gradient-checkpointing",
            "--host-ram-gib", "512", "--prompt-len", "1024"]
    result = run("estimate", *args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].endswith(
        "memplan plan --model meta-llama/Llama-2-7b-hf --gpus 8xA100-40GB --host-ram-gib 512.0 --algo ppo "
        "--no-gradient-checkpointing --zero-stage 1 --ref-zero-stage 3 --offload-ref --prompt-len 1024")


def test_estimate_that_fits_does_not_search(monkeypatch):
    import memplan.cli.plan

    def boom(*args, **kwargs):
        raise AssertionError("the planner ran for a run that fits")

    monkeypatch.setattr(memplan.cli.plan, "plan_search", boom)
    result = run("estimate", "--model", "Qwen/Qwen2.5-0.5B", "--algo", "grpo", "--gpus", "1xH100-80GB")
    assert result.exit_code == 0, result.output
    assert "What to try next" not in result.stdout
    json_out = run("estimate", *HEADLINE, "--json")  # JSON stays JSON, fits or not
    assert json.loads(json_out.stdout)["fits"] is False


def test_compare_says_what_to_try_for_each_algorithm_that_does_not_fit():
    result = run("compare", *HEADLINE, "--algos", "ppo,grpo")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "What to try next" in out
    for algo in ("ppo", "grpo"):
        request = EstimateRequest(model="meta-llama/Llama-2-7b-hf", algo=algo, gpus="8xA100-40GB", zero_stage=0)
        best = plan(request, allow=set(KNOBS), max_results=1).candidates[0]
        assert f"  {algo}: {render.changes(best.changes)} (peak {best.peak_bytes_per_gpu / GiB:.2f} GiB per GPU)" in out
        assert f"memplan plan --model meta-llama/Llama-2-7b-hf --gpus 8xA100-40GB --algo {algo} --zero-stage 0" in out


# ----------------------------------------------------------------------------- 17: the listing


def test_models_lists_no_test_fixtures():
    listed = json.loads(run("models", "--json").stdout)
    assert listed and not [m["name"] for m in listed if m["name"].startswith("memplan/")]
    assert "tiny" not in run("models").stdout
    # still loadable by name, for the tests that use them
    assert catalog.get_model("memplan/tiny-llama").num_params > 0
    assert run("estimate", "--model", "memplan/tiny-llama", "--gpus", "1xA100-80GB").exit_code == 0


# ----------------------------------------------------------------------------- 13: serve


def test_serve_prints_where_it_listens(monkeypatch):
    import api.server

    with socket.socket() as probe:  # a port nobody holds
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    calls = []
    monkeypatch.setattr(api.server, "serve", lambda **kw: calls.append(kw))
    result = run("serve", "--port", str(port))
    assert result.exit_code == 0, result.output
    assert calls == [{"host": "127.0.0.1", "port": port, "workers": 1}]
    assert f"http://127.0.0.1:{port}" in result.stdout
    assert f"docs: http://127.0.0.1:{port}/docs" in result.stdout
    wild = run("serve", "--host", "0.0.0.0", "--port", str(port))
    assert "all interfaces" in wild.stdout and f"http://127.0.0.1:{port}/docs" in wild.stdout


def test_serve_on_a_taken_port_is_one_error(monkeypatch):
    import api.server

    monkeypatch.setattr(api.server, "serve", lambda **kw: None)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --port: cannot listen on 127.0.0.1:{port}: "), result.stderr


def test_text_in_brackets_prints_as_it_is(capsys):
    # rich would read '[s−1, V]' as a style tag and drop it, and raise on '[/x]' (a path, a model name, a note)
    report = memplan.estimate(EstimateRequest(model="llama-2-7b", algo="grpo", gpus="1xH100-80GB"))
    notes = ("3 × [s−1, V] fp32 log-probs", "read from run[/x].sh")
    render.estimate(report.model_copy(update={"notes": notes}))
    out = capsys.readouterr().out
    assert "• 3 × [s−1, V] fp32 log-probs" in out and "• read from run[/x].sh" in out
