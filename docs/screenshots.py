"""Screenshot notebook 02's widgets running in a real JupyterLab (for the README).

Needs a Chromium and the Playwright client, which the tutorial itself does not:
    apt-get install chromium && pip install playwright
    python docs/screenshots.py --chromium /usr/bin/chromium
It starts JupyterLab from .venv on a free port, runs every cell of notebook 02 in the browser,
and saves docs/img/step_viewer.png and docs/img/per_position.png.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "specdec-screenshots"


# True once no cell is queued or running ("[*]") and the kernel reports Idle.
DONE = """() => {
  const running = [...document.querySelectorAll('.jp-InputArea-prompt')].some(p => p.textContent.includes('*'));
  const idle = [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(t => t.textContent.includes('Idle'));
  return !running && idle;
}"""


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, root: Path) -> subprocess.Popen:
    """JupyterLab from the project's .venv, serving `root` on localhost only."""
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/jupyter"), "lab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def main() -> None:
    """Run notebook 02 in JupyterLab and screenshot the step viewer and the per-position chart."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=int, default=900, help="seconds to wait for the notebook to finish")
    args = parser.parse_args()
    out = ROOT / "docs/img"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Serve a copy: JupyterLab autosaves, and the committed notebook must keep its nbconvert outputs.
    root = Path(tempfile.mkdtemp(prefix="specdec-shots-"))
    shutil.copy(ROOT / "notebooks/02_greedy_loop.ipynb", root)
    lab = start_lab(port, root)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            url = f"http://127.0.0.1:{port}/lab/tree/02_greedy_loop.ipynb?token={TOKEN}"
            for _ in range(60):  # the server takes a few seconds to start
                try:
                    page.goto(url)
                    break
                except Exception:
                    time.sleep(1)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_function(DONE, timeout=120_000)  # kernel ready
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            time.sleep(5)
            page.wait_for_function(DONE, timeout=args.timeout * 1000, polling=2000)
            viewer = page.locator(".jp-OutputArea-output:has(.widget-slider)").first
            viewer.scroll_into_view_if_needed()
            viewer.locator(".widget-slider .noUi-handle, .widget-slider input").first.focus()
            page.keyboard.press("ArrowRight")  # move the slider one step, as a reader would
            time.sleep(1)
            viewer.screenshot(path=str(out / "step_viewer.png"))
            chart = page.locator(".jp-Cell:has-text('plot_acceptance_per_position(') .jp-OutputArea-output img").first
            chart.scroll_into_view_if_needed()
            chart.screenshot(path=str(out / "per_position.png"))
            browser.close()
    finally:
        lab.terminate()
        shutil.rmtree(root, ignore_errors=True)
    print("wrote", out / "step_viewer.png", "and", out / "per_position.png")


if __name__ == "__main__":
    sys.exit(main())
