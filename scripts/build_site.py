"""Build the course site (`make site`): every chapter and solution as a static page, a chapter map, the teacher's guide.

Why nbconvert and not Jupyter Book 2: it is already installed with the notebooks, needs no Node.js
and downloads nothing at build time (Jupyter Book 2's MyST theme is fetched on first build, which a
machine without the internet can't do), and the pages show the committed outputs as they are.
Nothing is executed: the notebooks are committed with their outputs.

What the pages leave out, so that they load with no network at all:
- JavaScript from CDNs (require.js, the widget manager, MathJax, mermaid). Formulas are turned into
  MathML when the site is built (latex2mathml), which browsers render natively.
- Live widgets. Each chapter follows every widget with a static twin (the same view, rendered as
  HTML); the page keeps that twin and puts a note where the widget was.

    python scripts/build_site.py --out build/site
"""

from __future__ import annotations

import argparse
import copy
import functools
import datetime
import html
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nbformat
from latex2mathml.converter import convert as latex_to_mathml
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "site_templates"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ('<div class="site-widget">Interactive widget: it runs in JupyterLab (<code>make lab</code>). '
               "The static view just below shows what it displays.</div>")
TITLE = "Speculative decoding, hands-on"

# Which chapters each one builds on (what a learner should have done first).
NEEDS = {
    "01": [], "02": ["01"], "03": ["02"], "04": ["02"], "05": ["04"], "06": ["05"], "07": ["05", "06"],
    "08": ["06"], "09": ["08"], "10": ["04", "05"], "11": ["04", "07"], "12": ["06", "08", "11"],
}


@dataclass(frozen=True)
class Page:
    """One notebook and where its page goes."""

    source: Path
    kind: str  # "chapter" or "solution"

    @property
    def number(self) -> str:
        return self.source.name[:2]

    @property
    def href(self) -> str:
        return f"{'chapters' if self.kind == 'chapter' else 'solutions'}/{self.source.stem}.html"

    @functools.cached_property  # the bar of every page names its neighbours: read each notebook once
    def title(self) -> str:
        """The notebook's first heading, without the '#'."""
        first = "".join(nbformat.read(self.source, as_version=4).cells[0].source).splitlines()[0]
        return first.lstrip("# ").strip()


def run_all_seconds(notebook: Path) -> float:
    """Seconds its code cells took when it was last run top to bottom (from the timings Jupyter saves in each cell)."""
    total = 0.0
    for cell in json.loads(notebook.read_text())["cells"]:
        timing = cell.get("metadata", {}).get("execution", {})
        if cell["cell_type"] == "code" and "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            total += (end - start).total_seconds()
    return total


def untimed_cells(notebook: Path) -> int:
    """Code cells without saved timings: a notebook saved without running it top to bottom."""
    cells = json.loads(notebook.read_text())["cells"]
    return sum(c["cell_type"] == "code" and "shell.execute_reply" not in c.get("metadata", {}).get("execution", {})
               for c in cells)


def notebooks() -> list[Path]:
    """The chapters, then the solutions."""
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


def run_all_table() -> str:
    """The README's table of Run All times, from the timings saved in the committed notebooks."""
    rows = ["| notebook | Run All |", "|---|---|"]
    rows += [f"| `{p.parent.name}/{p.name}` | {run_all_seconds(p) / 60:.1f} min |" for p in notebooks()]
    return "\n".join(rows)


MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$([^$\n]+?)\$", re.S)


def math_to_mathml(markdown: str) -> str:
    """Formulas ($...$, $$...$$) as MathML, outside code spans and blocks."""
    parts = re.split(r"(```.*?```|`[^`]*`)", markdown, flags=re.S)
    for i in range(0, len(parts), 2):  # even parts are outside code
        parts[i] = MATH.sub(lambda m: latex_to_mathml(m.group(1) or m.group(2),
                                                      display="block" if m.group(1) else "inline"), parts[i])
    return "".join(parts)


def for_the_site(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy without live widgets (a note where each was), nbval's markers, and with formulas in MathML."""
    notebook = copy.deepcopy(notebook)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(cell.source)
        else:  # nbval's markers are for the tests, not for readers
            cell.source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("# NBVAL_"))
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                output["data"] = {"text/html": WIDGET_NOTE}
    return notebook


def nav_html(pages: list[Page], i: int) -> str:
    """The bar at the top of a page: the index, the previous and next pages, the chapter's solution or chapter."""
    page, links = pages[i], ['<a href="../index.html">Course map</a>']
    same = [p for p in pages if p.kind == page.kind]
    j = same.index(page)
    if j > 0:
        links.append(f'<a href="../{same[j - 1].href}">← {html.escape(same[j - 1].title)}</a>')
    if j + 1 < len(same):
        links.append(f'<a href="../{same[j + 1].href}">{html.escape(same[j + 1].title)} →</a>')
    twin = [p for p in pages if p.number == page.number and p.kind != page.kind]
    if twin:
        links.append(f'<a href="../{twin[0].href}">{"Solutions" if page.kind == "chapter" else "The chapter"}</a>')
    return '<nav class="site-nav">' + " · ".join(links) + "</nav>"


def exporter() -> HTMLExporter:
    """nbconvert's lab template without CDN scripts, plus the site's bar and styles."""
    export = HTMLExporter(template_name="course", extra_template_basedirs=[str(TEMPLATES)])
    export.exclude_input_prompt = export.exclude_output_prompt = True
    return export


def index_html(pages: list[Page]) -> str:
    """The course map: each chapter, what it needs, its Run All time, and its solutions."""
    chapters = [p for p in pages if p.kind == "chapter"]
    solutions = {p.number: p for p in pages if p.kind == "solution"}
    rows = []
    for page in chapters:
        needs = ", ".join(NEEDS.get(page.number, [])) or "—"
        solved = solutions.get(page.number)
        rows.append(
            f'<tr><td><a href="{page.href}">{html.escape(page.title)}</a></td><td>{needs}</td>'
            f"<td>{run_all_seconds(page.source) / 60:.1f} min</td>"
            f"<td>{f'<a href={chr(34)}{solved.href}{chr(34)}>solutions</a>' if solved else 'answers stated in the chapter'}</td></tr>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{TITLE}</title>{FAVICON}<style>{SITE_CSS}</style></head>
<body><main class="site-index">
<h1>{TITLE}</h1>
<p>From one speculative step to the methods the field's speed comes from. Every chapter is a Jupyter notebook:
read it here, or run it with <code>make lab</code>. The pages show the committed outputs; nothing here runs.</p>
<p><a href="teaching.html">Teacher's guide</a>: three 90-minute labs, what to assign, and the pitfalls.</p>
<h2>Chapter map</h2>
<table class="site-map"><tr><th>chapter</th><th>builds on</th><th>Run All (2-core CPU)</th><th>exercises</th></tr>
{''.join(rows)}</table>
<p>Run All: the seconds its cells took when the notebook was last run top to bottom for the repository
(2-core CPU, alone on the machine; the model load included).</p>
</main></body></html>
"""


FAVICON = '<link rel="icon" href="data:,">'  # no /favicon.ico request, which would 404
SITE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; }
.site-index { max-width: 60em; margin: 2em auto; padding: 0 1em; line-height: 1.5; }
.site-map { border-collapse: collapse; }
.site-map td, .site-map th { border: 1px solid #bbb; padding: 4px 10px; text-align: left; }
"""


def build(out: Path) -> list[Path]:
    """Write the site into `out` (replaced); return the pages written."""
    pages = [Page(p, "chapter" if p.parent.name == "notebooks" else "solution") for p in notebooks()]
    if out.exists():
        shutil.rmtree(out)
    (out / "chapters").mkdir(parents=True)
    (out / "solutions").mkdir()
    export, written = exporter(), []
    for i, page in enumerate(pages):
        notebook = for_the_site(nbformat.read(page.source, as_version=4))
        body, _ = export.from_notebook_node(notebook, resources={"site_nav": nav_html(pages, i),
                                                                "metadata": {"name": page.title}})
        (out / page.href).write_text(body)
        written.append(out / page.href)
    (out / "index.html").write_text(index_html(pages))
    guide = markdown2html_mistune((ROOT / "docs" / "teaching.md").read_text())
    (out / "teaching.html").write_text(
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Teacher\'s guide</title>{FAVICON}'
        f"<style>{SITE_CSS}</style></head><body><main class=\"site-index\">"
        f'<nav><a href="index.html">Course map</a></nav>{guide}</main></body></html>')
    return written + [out / "index.html", out / "teaching.html"]


def main() -> None:
    """Build the site and say where it is."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--times", action="store_true", help="print the README's table of Run All times and stop")
    args = parser.parse_args()
    if args.times:
        print(run_all_table())
        return
    pages = build(args.out)
    print(f"{len(pages)} pages in {args.out} (open {args.out / 'index.html'})")


if __name__ == "__main__":
    main()
