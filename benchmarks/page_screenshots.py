"""The README's pictures of the planner page and of ``--plot``: regenerate them with

    python benchmarks/page_screenshots.py

It serves the app under uvicorn on a free local port, opens each page below in Debian's Chromium (driven by
Playwright, ``executable_path``), at a laptop's 1366 × 900 viewport, and writes the screenshots to docs/;
then runs the CLI's ``--plot`` for the figures below. Needs ``pip install -e '.[all,test]'`` and
``apt-get install chromium``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# ---- configuration ----
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1366, "height": 900}
PAGES = {  # file in docs/ → the page's query string (its state)
    "page.png": "",  # the README's headline question, as the page opens
    "page-grpo.png": "?model=Qwen%2FQwen2.5-7B&algo=grpo&gpus=8xH100-80GB&zero_stage=3&rollout_engine=vllm"
                     "&gradient_checkpointing=true&micro_batch_size=4&stack=role",
}
PLOTS = {  # file in docs/ → memplan arguments
    "plot-compare.png": ["compare", "--model", "meta-llama/Llama-2-7b-hf", "--gpus", "8xA100-40GB",
                         "--algos", "ppo,remax,grpo", "--zero-stage", "3", "--gradient-checkpointing"],
    "plot-max-batch.png": ["plan", "--model", "Qwen/Qwen2.5-7B", "--algo", "grpo", "--gpus", "8xH100-80GB",
                           "--zero-stage", "3", "--max-batch"],
}
# -----------------------

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def serve() -> tuple[str, object]:
    import uvicorn

    sys.path.insert(0, str(ROOT))
    from api.main import app

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server


def main() -> None:
    from playwright.sync_api import sync_playwright

    DOCS.mkdir(exist_ok=True)
    base, server = serve()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport=VIEWPORT)
        for name, query in PAGES.items():
            page.goto(base + "/" + query)
            page.wait_for_selector("#chart-svg")
            page.wait_for_function(  # the planner has answered
                "() => !['', 'Searching…'].includes(document.getElementById('plan-status').textContent)")
            page.wait_for_timeout(300)
            page.screenshot(path=DOCS / name)
            print(f"docs/{name}: {base}/{query}")
        browser.close()
    server.should_exit = True
    for name, args in PLOTS.items():
        command = [sys.executable, "-c", "from memplan.cli import main; main()", *args, "--plot", str(DOCS / name)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        print(f"docs/{name}: memplan {' '.join(args)} --plot docs/{name}")


if __name__ == "__main__":
    main()
