"""The course site (`make site`): built from the committed notebooks, then opened page by page in headless Chromium.

Debian's `chromium`, driven by Playwright's Python package (Playwright's own browser download needs
the internet). `make test` sets SPECDEC_REQUIRE_BROWSER=1, so a missing browser fails instead of skipping.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a container, and with nothing reachable: no sandbox, no GPU, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.site


def load_builder():
    """scripts/build_site.py as a module."""
    spec = importlib.util.spec_from_file_location("build_site", ROOT / "scripts" / "build_site.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_site"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


builder = load_builder()


def browser_or_skip():
    """Playwright's sync API and the Chromium path, or a skip (a failure under SPECDEC_REQUIRE_BROWSER=1)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        reason = f"playwright is not installed ({error})"
    else:
        if Path(CHROMIUM).exists():
            return sync_playwright
        reason = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    if os.environ.get("SPECDEC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test is required here, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    builder.build(out)
    return out


@pytest.fixture(scope="module")
def server(site):
    """A local HTTP server on 127.0.0.1 serving the site; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def notebook_counts(path: Path) -> dict[str, int]:
    """How many plots and widget views a notebook's committed outputs hold."""
    outputs = [o for c in json.loads(path.read_text())["cells"] for o in c.get("outputs", [])]
    return {"images": sum("image/png" in o.get("data", {}) for o in outputs),
            "widgets": sum(builder.WIDGET_VIEW in o.get("data", {}) for o in outputs)}


def all_pages(site: Path) -> list[str]:
    """Every page of the site, relative to its root."""
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))


# In the page: images that did not load, and widget notes with no static view in the next three cells.
BROKEN_IMAGES = "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))"
NOTES_WITHOUT_VIEW = """() => {
  const cells = Array.from(document.querySelectorAll('.jp-Cell'));
  return Array.from(document.querySelectorAll('.site-widget')).filter(note => {
    const at = cells.indexOf(note.closest('.jp-Cell'));
    return !cells.slice(at + 1, at + 4).some(c => c.querySelector('.sd-view, img, table'));
  }).length;
}"""


def test_the_site_has_a_page_per_chapter_and_solution(site):
    pages = all_pages(site)
    chapters = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    solutions = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    assert {f"chapters/{p.stem}.html" for p in chapters} <= set(pages)
    assert {f"solutions/{p.stem}.html" for p in solutions} <= set(pages)
    assert "index.html" in pages and "teaching.html" in pages
    index = (site / "index.html").read_text()
    assert all(f'href="chapters/{p.stem}.html"' in index for p in chapters), "the chapter map misses a chapter"
    for page in pages:  # nothing loaded from elsewhere: the site must work offline
        text = (site / page).read_text()
        assert "<script src=\"http" not in text and "cdn" not in text.lower().split("<style")[0], page


def test_every_notebook_runs_in_five_minutes_and_the_readme_lists_the_times():
    """From the timings Jupyter saved when each notebook was last run top to bottom (`make` re-runs none of them)."""
    for path in builder.notebooks():
        assert builder.untimed_cells(path) == 0, f"{path.name}: saved without running every cell"
        assert builder.run_all_seconds(path) <= 300, f"{path.name}: Run All took {builder.run_all_seconds(path):.0f} s"
    assert builder.run_all_table() in (ROOT / "README.md").read_text(), \
        "README's Run All times are stale: paste `python scripts/build_site.py --times`"


def test_formulas_become_mathml_outside_code():
    assert "<math" in builder.math_to_mathml("gain $\\frac{1}{2}$ and $$x^2$$")
    assert builder.math_to_mathml("`cost $5 and $6`") == "`cost $5 and $6`"  # dollars in code stay


def test_every_page_loads_in_chromium_without_errors(site, server):
    sync_playwright = browser_or_skip()
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("request", lambda r: errors.append(f"left the site: {r.url}")
                if urlparse(r.url).hostname not in ("127.0.0.1", None) and not r.url.startswith("data:") else None)
        for name in all_pages(site):
            errors.clear()
            response = page.goto(f"{server}/{name}", wait_until="load")
            assert response is not None and response.ok, name
            broken = page.evaluate(BROKEN_IMAGES)
            if errors or broken:
                problems.append(f"{name}: {errors + [f'broken image {b}' for b in broken]}")
            if name.startswith(("chapters/", "solutions/")):
                source = ROOT / ("notebooks" if name.startswith("chapters/") else "solutions") / (Path(name).stem + ".ipynb")
                counts = notebook_counts(source)
                images = page.evaluate("document.querySelectorAll('.jp-OutputArea img').length")
                notes = page.evaluate("document.querySelectorAll('.site-widget').length")
                if images != counts["images"] or notes != counts["widgets"]:
                    problems.append(f"{name}: {images} plots and {notes} widget notes on the page, "
                                    f"{counts['images']} and {counts['widgets']} in the notebook")
                if page.evaluate(NOTES_WITHOUT_VIEW):
                    problems.append(f"{name}: a widget without its static view after it")
                if page.evaluate("document.querySelectorAll('nav.site-nav a').length") < 2:
                    problems.append(f"{name}: no navigation bar")
        page.goto(f"{server}/index.html")
        for link in page.eval_on_selector_all("a", "as => as.map(a => a.href)"):
            if link.startswith(server) and not page.request.get(link).ok:
                problems.append(f"index.html: broken link {link}")
        browser.close()
    assert not problems, "\n".join(problems)


def test_the_browser_check_can_fail(tmp_path, server):
    """A page with a broken image and a script error is caught by the same checks."""
    sync_playwright = browser_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="missing.png"><script>undefined_function()</script></body></html>')
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(bad.as_uri(), wait_until="load")
        assert page.evaluate(BROKEN_IMAGES) and errors
        browser.close()
