"""The planner page at ``/`` (``api/routes/page.py``, ``api/static/``), in a real headless browser.

Chromium from Debian's packages (``apt-get install chromium``; ``.ci/run`` installs it), driven by Playwright
through ``executable_path`` (Playwright's own browser download does not install on these machines). Where no
Chromium is found the browser tests skip, with the reason, except in CI (``CI=true``), where they fail.
The service runs under a real uvicorn in a thread; every request the page makes to another origin is refused
and recorded, so "loads offline" means: nothing but this service was asked for anything.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from api.main import app
from api.routes.page import FILES

client = TestClient(app)
GiB = 1024**3


# ---------- the route, without a browser ----------

def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name in FILES:
        assert client.get(f"/page/{name}").status_code == 200
    # the HTML loads only this service's files: no CDN, no other origin
    assert "http" not in page.text.split("<body>")[0] and "//" not in page.text.split("<body>")[0]


@pytest.mark.parametrize("name", ["../main.py", "..%2Fmain.py", "page.py", "static/page.js", "", "INDEX.HTML"])
def test_only_the_named_files_are_served(name: str) -> None:
    assert client.get(f"/page/{name}").status_code == 404


def test_the_page_is_not_in_the_api_schema() -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/page") for p in paths)


# ---------- in Chromium ----------

def _chromium() -> str:
    """The Chromium executable, or skip (fail in CI) saying why there is none."""
    problem = ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install playwright; it is in the [test] extra)"
    named = os.environ.get("MEMPLAN_CHROMIUM")
    path = shutil.which(named) if named else shutil.which("chromium") or shutil.which("chromium-browser")
    if not problem and not path:
        problem = (f"MEMPLAN_CHROMIUM={named!r} is not an executable" if named else
                   "no chromium on PATH (apt-get install chromium; or set MEMPLAN_CHROMIUM)")
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests cannot run in CI: {problem}")
        pytest.skip(problem)
    return path  # type: ignore[return-value]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server: str):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    elsewhere: list[str] = []
    here = urlsplit(server).netloc

    def guard(route) -> None:
        if urlsplit(route.request.url).netloc == here:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.elsewhere = elsewhere
    yield pg
    context.close()
    assert not errors, errors
    assert not elsewhere, f"the page asked another origin: {elsewhere}"


def _open(page, server: str, query: str = "") -> None:
    page.goto(server + "/" + query)
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#chart-svg")


def _estimate(body: dict) -> dict:
    answer = client.post("/v1/estimate", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _verdict(report: dict) -> str:
    """FITS, TIGHT or DOES NOT FIT, as the page shows the report's verdict."""
    return report.get("verdict", "fits" if report["fits"] else "does_not_fit").upper().replace("_", " ")


HEADLINE = {"model": "meta-llama/Llama-2-7b-hf", "algo": "ppo", "gpus": "8xA100-40GB"}
# the page's default question with unsharded replicas (the default before zero_stage became automatic): does not fit
UNSHARDED, UNSHARDED_QUERY = {**HEADLINE, "zero_stage": 0}, "?zero_stage=0"
# ReMax as the ReMax paper's script runs it (micro batch 1): TIGHT (the estimate fits, 37.30 of 39.49 GiB; the band's
# high end does not)
PAPER_REMAX = {**HEADLINE, "algo": "remax", "zero_stage": 2, "ref_zero_stage": 3, "reward_zero_stage": 3,
               "offload_ref": True, "offload_reward": True, "gradient_checkpointing": True,
               "rollout_engine": "hybrid-engine", "micro_batch_size": 1}


def test_the_page_loads_offline_and_is_labelled(page, server: str) -> None:
    _open(page, server)
    assert page.title().startswith("memplan")
    assert page.elsewhere == []  # scripts, styles, icon, catalog: all from this service
    # every control has a label a screen reader announces
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => e.type !== 'hidden' && !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabelled == []
    # keyboard: Tab from the top reaches the model field, then the next control
    page.keyboard.press("Tab")  # the skip link
    assert page.evaluate("document.activeElement.className") == "skip"


def test_an_estimate_renders_its_bars_against_the_capacity_line(page, server: str) -> None:
    _open(page, server, UNSHARDED_QUERY)
    report = _estimate(UNSHARDED)
    assert page.inner_text("#verdict .word") == _verdict(report) == "DOES NOT FIT"
    phases = page.locator("#chart-svg g.phase")
    assert phases.count() == len(report["phases"])
    # each bar's segments end where its total puts it, on the axis the capacity line is drawn on:
    # (bar end − axis start) / (capacity x − axis start) = phase total / capacity
    geometry = page.evaluate("""() => {
        const line = document.getElementById('capacity-line');
        const bars = [...document.querySelectorAll('#chart-svg g.phase')].map(g => {
            const r = [...g.querySelectorAll('rect.seg')];
            return {phase: g.dataset.phase, start: +r[0].getAttribute('x'),
                    end: Math.max(...r.map(s => +s.getAttribute('x') + +s.getAttribute('width'))), n: r.length};
        });
        return {cap: +line.getAttribute('x1'), bars};
    }""")
    for bar, phase in zip(geometry["bars"], report["phases"], strict=True):
        assert bar["phase"] == phase["phase"] and bar["n"] >= 3
        ratio = (bar["end"] - bar["start"]) / (geometry["cap"] - bar["start"])
        assert ratio == pytest.approx(phase["total_bytes"] / report["capacity_bytes"], rel=1e-3)
    # stacked by category: the categories of the report's breakdowns, the legend naming them
    legend = page.locator("#legend .key").all_inner_texts()
    assert "optstate" in legend and "parameter" in legend
    page.check("input[name=stack][value=role]")
    assert set(page.locator("#legend .key").all_inner_texts()) <= {"actor", "critic", "reference", "reward", "runtime"}
    assert "stack=role" in page.url
    # the deciding terms and host RAM, as the report has them
    assert page.locator("#terms li").count() == len(report["deciding_terms"])
    assert "0.00 GiB of 1024.00 GiB" in page.inner_text("#host")


def test_a_bad_input_shows_the_apis_message_beside_the_field(page, server: str) -> None:
    _open(page, server)
    page.fill("#k-micro_batch_size", "0")
    page.locator("#k-micro_batch_size").dispatch_event("change")
    message = client.post("/v1/estimate", json={**HEADLINE, "micro_batch_size": 0}).json()["detail"][0]["msg"]
    error = page.locator("#err-micro_batch_size")
    error.wait_for()
    assert error.inner_text() == message  # "Input should be greater than or equal to 1"
    assert page.get_attribute("#k-micro_batch_size", "aria-invalid") == "true"
    assert "No estimate" in page.inner_text("#verdict")
    # fixed, and a name the catalog lacks: the API's own sentence, now beside the model field
    page.fill("#k-micro_batch_size", "1")
    page.locator("#k-micro_batch_size").dispatch_event("change")
    page.fill("#model", "meta-llama/Llama-9-7b")
    page.locator("#model").dispatch_event("change")
    page.locator("#err-model").wait_for()
    assert "is not a catalog model" in page.inner_text("#err-model")
    assert page.inner_text("#err-micro_batch_size") == "" and page.get_attribute("#model", "aria-invalid") == "true"
    assert page.get_attribute("#k-micro_batch_size", "aria-invalid") is None


def _shown(value: object) -> str:
    """A planner change's value as the page writes it."""
    return "default" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_a_plans_change_applies_with_one_click(page, server: str) -> None:
    _open(page, server, UNSHARDED_QUERY)
    first = page.locator("#plan li").first
    first.wait_for()
    plan = client.post("/v1/plan", json={"request": UNSHARDED, "max_results": 5}).json()
    changes = plan["candidates"][0]["changes"]  # the cheapest: {"zero_stage": [0, 3]} today
    shown = ", ".join(f"{k} {_shown(a)} → {_shown(b)}" for k, (a, b) in changes.items())
    assert first.locator(".change").inner_text() == shown
    first.locator("button.apply").click()
    # the page's request: the changes applied, a change back to a default (None) leaving the field out
    expected = {k: v for k, v in {**UNSHARDED, **{k: b for k, (_, b) in changes.items()}}.items() if v is not None}
    page.wait_for_function("(want) => JSON.stringify(JSON.parse(document.getElementById('json').value)) === want",
                           arg=json.dumps(expected, separators=(",", ":")))
    page.wait_for_function("() => !document.getElementById('results').classList.contains('stale') && "
                           "document.querySelector('#verdict .word')?.innerText !== 'DOES NOT FIT'")
    assert _estimate(expected)["fits"]
    for k, (_, b) in changes.items():
        assert (f"{k}={_shown(b)}" in page.url) if b is not None else (f"{k}=" not in page.url)
        if page.locator(f"#k-{k}").count() and not isinstance(b, bool):
            assert page.input_value(f"#k-{k}") == ("" if b is None else str(b))
    peak = plan["candidates"][0]["peak_bytes_per_gpu"]
    assert page.inner_text("#verdict .numbers").startswith(f"Peak {peak / GiB:.2f} GiB")


def test_a_shared_url_restores_the_state(page, server: str) -> None:
    query = ("?model=Qwen%2FQwen2.5-7B&algo=grpo&gpus=2x8xH100-80GB&zero_stage=3&gradient_checkpointing=true"
             "&rollout_engine=vllm&group_size=16&host_ram_bytes_per_node=549755813888&stack=role")
    _open(page, server, query)
    body = {"model": "Qwen/Qwen2.5-7B", "algo": "grpo", "gpus": "2x8xH100-80GB", "zero_stage": 3,
            "gradient_checkpointing": True, "rollout_engine": "vllm", "group_size": 16,
            "host_ram_bytes_per_node": 512 * GiB}
    assert json.loads(page.input_value("#json")) == body
    assert page.input_value("#model") == "Qwen/Qwen2.5-7B" and page.input_value("#k-algo") == "grpo"
    assert [page.input_value(s) for s in ("#gpu-nodes", "#gpu-count", "#gpu-kind")] == ["2", "8", "H100-80GB"]
    assert page.is_checked("#k-gradient_checkpointing") and page.input_value("#host_ram_gib") == "512"
    assert page.is_checked("input[name=stack][value=role]")
    report = _estimate(body)
    assert page.inner_text("#verdict .word") == _verdict(report)
    assert f"{report['peak_bytes_per_gpu'] / GiB:.2f} GiB" in page.inner_text("#verdict .numbers")
    assert page.input_value("#cli") == ("memplan estimate --model Qwen/Qwen2.5-7B --algo grpo --gpus 2x8xH100-80GB "
                                        "--zero-stage 3 --gradient-checkpointing --rollout-engine vllm --group-size 16 "
                                        "--host-ram-gib 512")
    # the page's own link, opened afresh, gives the same request
    link = page.input_value("#link")
    _open(page, server, "?" + link.split("?", 1)[1])
    assert json.loads(page.input_value("#json")) == body


def test_a_pasted_config_json_is_sent_as_the_inline_architecture(page, server: str) -> None:
    _open(page, server)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
              "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
              "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "rope_theta": 500000.0}
    page.click("#arch-box summary")
    page.fill("#arch", json.dumps(config))
    page.locator("#arch").dispatch_event("change")
    page.wait_for_function("() => document.getElementById('json').value.includes('hidden_size')")
    sent = json.loads(page.input_value("#json"))["model"]
    assert sent == {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype", "rope_theta")}
    report = _estimate({**HEADLINE, "model": sent})
    page.wait_for_function("(want) => document.querySelector('#verdict .numbers')?.innerText.includes(want)",
                           arg=f"Peak {report['peak_bytes_per_gpu'] / GiB:.2f} GiB")
    assert page.inner_text("#arch-info").startswith("Sent: model_type, hidden_size")
    assert "--model config.json" in page.input_value("#cli")


def test_a_tight_verdict_shows_its_error_band(page, server: str) -> None:
    report = _estimate(PAPER_REMAX)
    assert report["verdict"] == "tight", "this run is no longer TIGHT: pick another for the test"
    _open(page, server, "?" + "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                       for k, v in PAPER_REMAX.items() if k not in HEADLINE or k == "algo"))
    assert page.inner_text("#verdict .word") == "TIGHT"
    assert "tight" in page.get_attribute("#verdict", "class")
    low, high = report["peak_band_bytes"]
    assert f"between {low / GiB:.2f} GiB and {high / GiB:.2f} GiB" in page.inner_text("#verdict")
    assert page.locator("#chart-svg g.band").count() == len(report["phase_bands"])
    # keyboard only: focus the role toggle and pick it with the arrow key, as a radio group does
    page.focus("input[name=stack][value=category]")
    page.keyboard.press("ArrowRight")
    assert page.is_checked("input[name=stack][value=role]") and "stack=role" in page.url
