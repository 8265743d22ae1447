"""``--plot`` (``memplan/plot.py``, the ``[plot]`` extra): the phase bars of ``estimate`` and ``compare``, the
peak against the batch size of ``plan --max-batch``; matplotlib only when asked for, and a clear exit 2 without.

The figures are checked through their SVG text (``svg.fonttype: none`` keeps labels as text): every number a
figure writes is the report's own, as ``--json`` gives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

import memplan
from memplan.cli.app import app
from memplan.units import GiB

pytest.importorskip("matplotlib")  # the [plot] extra; [all] and CI have it

runner = CliRunner()
HEADLINE = ["--model", "meta-llama/Llama-2-7b-hf", "--algo", "ppo", "--gpus", "8xA100-40GB"]


def run(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def svg_text(path: Path) -> str:
    """Every text of the SVG, one string (the file also parses as XML)."""
    root = ET.parse(path).getroot()
    return " ".join(t.strip() for t in root.itertext() if t.strip())


def test_estimate_plot_draws_each_phase_against_the_capacity(tmp_path: Path) -> None:
    out = tmp_path / "estimate.svg"
    result = run("estimate", *HEADLINE, "--zero-stage", "3", "--plot", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().endswith(f"plot: wrote {out}")
    report = memplan.estimate(model="meta-llama/Llama-2-7b-hf", algo="ppo", gpus="8xA100-40GB", zero_stage=3)
    text = svg_text(out)
    assert f"capacity {report.capacity_bytes / GiB:.2f} GiB" in text  # 39.59 GiB: the A100-40GB's usable memory
    for phase in report.phases:
        assert phase.phase.replace("_", " ") in text
        assert f"{phase.total_bytes / GiB:.2f} GiB" in text
    assert "◀ peak" in text and report.verdict.upper().replace("_", " ") in text
    for category in ("parameter", "optstate", "gradient"):  # the legend: categories the bars hold
        assert category in text


def test_the_same_report_gives_the_same_svg(tmp_path: Path) -> None:
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    for out in (a, b):
        assert run("estimate", *HEADLINE, "--plot", str(out), "--json").exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_png_and_json_together(tmp_path: Path) -> None:
    out = tmp_path / "estimate.png"
    result = run("estimate", *HEADLINE, "--json", "--plot", str(out))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["peak_phase"] == "actor_update"  # stdout stays the JSON
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_compare_plot_has_a_panel_per_algorithm(tmp_path: Path) -> None:
    out = tmp_path / "compare.svg"
    result = run("compare", *HEADLINE, "--algos", "ppo,remax,grpo", "--zero-stage", "3", "--plot", str(out))
    assert result.exit_code == 0, result.stderr
    text = svg_text(out)
    for algo in ("PPO", "REMAX", "GRPO"):
        assert f"{algo} · meta-llama/Llama-2-7b-hf · 8×A100-40GB" in text


def test_plan_max_batch_plot_marks_the_limit(tmp_path: Path) -> None:
    out = tmp_path / "batch.svg"
    args = ["plan", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus", "8xH100-80GB", "--zero-stage", "3",
            "--max-batch", "--json"]
    result = run(*args, "--plot", str(out))
    assert result.exit_code == 0, result.stderr
    limit = json.loads(result.stdout)["max_micro_batch_size"]
    text = svg_text(out)
    assert f"largest that fits: {limit}" in text and "capacity 79.65 GiB" in text  # H100-80GB's usable memory
    assert "micro batch size (per GPU)" in text


@pytest.mark.parametrize(("args", "message"), [
    (["plan", *HEADLINE, "--plot", "x.svg"], "error: --plot: draws a batch search"),
    (["plan", *HEADLINE, "--min-gpus", "--plot", "x.svg"], "error: --plot: draws a batch search"),
    (["estimate", *HEADLINE, "--plot", "x.pdf"], "error: --plot: the file's suffix picks the format: .svg or .png"),
    (["estimate", *HEADLINE, "--plot", "no/such/folder/x.svg"], "error: --plot: cannot write 'no/such/folder/x.svg'"),
])
def test_a_plot_it_cannot_draw_is_one_error_line(args: list[str], message: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_the_install_hint_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError, as when not installed
    result = run("estimate", *HEADLINE, "--plot", str(tmp_path / "x.svg"))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --plot needs matplotlib, which is not installed: pip install 'memplan[plot]'")


def test_matplotlib_is_imported_only_for_a_plot() -> None:
    code = ("import sys, memplan, memplan.plot, memplan.cli.app; memplan.estimate(model='gpt2'); "
            "assert 'matplotlib' not in sys.modules, 'loaded without --plot'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
