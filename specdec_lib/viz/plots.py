"""Matplotlib figures of the speedup model and of measured runs (colour-blind-safe palette)."""

from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..bench.report import run_label
from ..bench.theory import estimate_alpha, expected_speedup, expected_tokens_per_step
from ..loop.generate import SpecStats, pool_steps
from ..loop.tree import TokenTree, allowed_attention
from ..loop.tree_growth import Candidates

MEASURED, PREDICTED, TREE = "#0072B2", "#E69F00", "#009E73"  # Okabe-Ito blue, orange and green
TREE_MARKERS = ("*", "P", "X", "D", "^", "v", "p", "h")  # one per tree run of a sweep
TITLE_WIDTH = 110  # characters per title line that fit a 10-inch figure at font size 10


def plot_k_sweep(runs: Sequence[Mapping], alpha: float, c: float, title: str = "") -> Figure:
    """Two panels over K: speedup and tokens per target call, predicted curves with measured points.

    Token-tree runs (with a `tree` key, chapter 09) are drawn at their depth, one marker each, named in the legend.
    """
    trees = [r for r in runs if r.get("tree")]
    runs = [r for r in runs if not r.get("tree")]
    ks = [r["k"] for r in runs]
    grid = np.arange(1, max(ks + [r["k"] for r in trees]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6))
    left.plot(grid, [expected_speedup(alpha, k, c) for k in grid], "--", color=PREDICTED,
              label=f"predicted (α={alpha:.2f}, c={c:.2f})")
    left.plot(ks, [r["speedup"] for r in runs], "o", color=MEASURED, label="measured")
    left.axhline(1.0, color="black", lw=0.8)
    left.set(xlabel="K (draft tokens per step)", ylabel="speedup over target alone", title="Speedup vs K")
    right.plot(grid, [expected_tokens_per_step(alpha, k) for k in grid], "--", color=PREDICTED, label="predicted")
    right.plot(ks, [r["tokens_per_target_call"] for r in runs], "s", color=MEASURED, label="measured")
    right.set(xlabel="K (draft tokens per step)", ylabel="new tokens per target call", title="Tokens per target call")
    # Trees of one depth side by side around it, so equal values don't hide each other.
    same_depth = {i: [j for j, o in enumerate(trees) if o["k"] == r["k"]] for i, r in enumerate(trees)}
    shift = {i: 0.12 * (group.index(i) - (len(group) - 1) / 2) for i, group in same_depth.items()}
    for ax, key in ((left, "speedup"), (right, "tokens_per_target_call")):
        for i, r in enumerate(trees):  # one marker per tree, named in the legend: labels beside points would overlap
            ax.plot(r["k"] + shift[i], r[key], TREE_MARKERS[i % len(TREE_MARKERS)], ms=10, color=TREE, ls="none",
                    label=f"tree {run_label(r)} (depth on x)")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        # Below the panel, so that it never covers a point.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    if title:  # wrapped, so that a long pair name is never cut off at the figure's edge
        fig.suptitle("\n".join(textwrap.fill(line, TITLE_WIDTH) for line in title.splitlines()), fontsize=10)
    fig.tight_layout()
    return fig


def plot_speedup_heatmap(k: int, points: Mapping[str, tuple[float, float]] | None = None, c_max: float = 1.0) -> Figure:
    """Predicted speedup at a fixed K over (alpha, c), with named (alpha, c) points marked."""
    alphas, costs = np.linspace(0.0, 0.99, 100), np.linspace(0.01, c_max, 100)
    grid = np.array([[expected_speedup(a, k, c) for a in alphas] for c in costs])
    points = points or {}
    # The legend goes under the axes, so it never covers a contour label or a point.
    fig, ax = plt.subplots(figsize=(6, 4.2 + 0.22 * len(points)))
    mesh = ax.pcolormesh(alphas, costs, grid, cmap="viridis", shading="auto", vmin=0, vmax=max(2.0, grid.max()))
    contour = ax.contour(alphas, costs, grid, levels=[0.5, 1.0, 1.5, 2.0, 3.0], colors="white", linewidths=0.8)
    ax.clabel(contour, fmt="%.1fx", fontsize=8)
    for (name, (a, c)), marker in zip(points.items(), "o^sDvP*"):
        # clip_on=False: a point at the edge (a stand-in with α near 1) is drawn whole.
        ax.plot(a, c, marker, color="#D55E00", markeredgecolor="white", markersize=9, label=name, clip_on=False)
    ax.set(xlabel="α (acceptance rate)", ylabel="c (draft cost / target cost)", title=f"Predicted speedup, K={k}")
    fig.colorbar(mesh, ax=ax, label="speedup over target alone")
    if points:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    fig.tight_layout()
    return fig


def _pooled(stats: SpecStats | Sequence[SpecStats]) -> tuple[int, list[int], list[int]]:
    """(k, proposed, accepted) pooled over one or several runs."""
    runs = [stats] if isinstance(stats, SpecStats) else list(stats)
    return (runs[0].k, *pool_steps(runs))


def plot_acceptance_per_position(stats: SpecStats | Sequence[SpecStats], title: str = "") -> Figure:
    """Bars: how often draft position i (1..K) was accepted; the line: α^i, the i.i.d. prediction.

    Among steps that drafted all K tokens, position i is accepted only if positions 1..i all were,
    which under i.i.d. acceptance α has probability α^i.
    """
    k, proposed, accepted = _pooled(stats)
    full = [a for p, a in zip(proposed, accepted) if p == k]
    if not full:
        raise ValueError("no step drafted all k tokens; run more tokens or lower k")
    alpha = estimate_alpha(proposed, accepted)
    positions = np.arange(1, k + 1)
    measured = [sum(a >= i for a in full) / len(full) for i in positions]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(positions, measured, color=MEASURED, label=f"measured ({len(full)} full steps)")
    ax.plot(positions, alpha ** positions, "o--", color=PREDICTED, label=f"α^i with α = {alpha:.2f}")
    ax.set(xlabel="draft position i", ylabel="fraction of steps accepting it", ylim=(0, 1.05),
           title=title or "Acceptance per draft position")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_accepted_histogram(stats: SpecStats | Sequence[SpecStats], title: str = "") -> Figure:
    """Histogram of accepted draft tokens per full step (0..K), with the truncated geometric prediction."""
    k, proposed, accepted = _pooled(stats)
    full = [a for p, a in zip(proposed, accepted) if p == k]
    if not full:
        raise ValueError("no step drafted all k tokens; run more tokens or lower k")
    alpha = estimate_alpha(proposed, accepted)
    counts = np.bincount(full, minlength=k + 1) / len(full)
    theory = [alpha**n * (1 - alpha) for n in range(k)] + [alpha**k]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(np.arange(k + 1), counts, color=MEASURED, label="measured")
    ax.plot(np.arange(k + 1), theory, "o--", color=PREDICTED, label=f"i.i.d. prediction, α = {alpha:.2f}")
    ax.set(xlabel="accepted draft tokens in a step", ylabel="fraction of steps", title=title or "Accepted tokens per step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_tree_step(tree: TokenTree, labels: Sequence[str], path: Sequence[int], committed: int = 3,
                   root_label: str = "root") -> Figure:
    """One tree step (chapter 09): the drafted tree with the accepted path highlighted, and its attention mask."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.35, 1]})
    levels = [list(tree.level(d)) for d in range(1, tree.depth + 1)]
    xy = {-1: (0.0, 0.5)}
    for d, level in enumerate(levels, start=1):
        for j, node in enumerate(level):
            xy[node] = (float(d), 1 - (j + 0.5) / len(level))
    accepted = set(path)
    for node, parent in enumerate(tree.parents):
        on_path = node in accepted
        (x0, y0), (x1, y1) = xy[parent], xy[node]
        left.plot([x0, x1], [y0, y1], color=TREE if on_path else "#BBBBBB", lw=2.5 if on_path else 1, zorder=1)
    for node, (x, y) in xy.items():
        text = root_label if node < 0 else f"{node}: {labels[node]}"
        face = "#FFFFFF" if node < 0 else ("#D5F0E6" if node in accepted else "#F2F2F2")
        edge = TREE if node in accepted or node < 0 else "#999999"
        left.text(x, y, text, ha="center", va="center", fontsize=9, zorder=2,
                  bbox=dict(boxstyle="round,pad=0.3", fc=face, ec=edge, lw=1.5 if node in accepted else 0.8))
    left.set(xlim=(-0.6, tree.depth + 0.6), ylim=(-0.05, 1.05), title="Drafted tree (green: the accepted path)")
    left.set_xticks(range(tree.depth + 1), ["root"] + [f"depth {d}" for d in range(1, tree.depth + 1)])
    left.set_yticks([])
    for side in ("top", "right", "left"):
        left.spines[side].set_visible(False)
    mask = allowed_attention(tree, committed, rows=tree.size, columns=committed + tree.size)
    right.imshow(mask.numpy(), cmap="Greens", vmin=0, vmax=1.4, aspect="auto")
    right.set_xticks(range(committed + tree.size), [f"c{i}" for i in range(committed)] + [str(i) for i in range(tree.size)],
                     fontsize=8)
    right.set_yticks(range(tree.size), [str(i) for i in range(tree.size)], fontsize=8)
    right.axvline(committed - 0.5, color="black", lw=0.8)
    right.set(xlabel=f"keys: {committed} committed tokens (c0..), then the nodes", ylabel="queries: the nodes",
              title="Tree attention mask (green: may attend)")
    fig.tight_layout()
    return fig


def plot_grown_tree(grown: Candidates, labels: Sequence[str], accepted: Sequence[int] = (), root_label: str = "root",
                    width: float = 12.0) -> Figure:
    """A dynamic tree step (chapter 09): every candidate the draft grew, with its chance; the verified ones, the fed ones, the accepted path.

    `labels[c]` is candidate c's token as text, `accepted` the candidates the target accepted.
    Each depth is a column, ordered by parent then chance, so siblings sit together.
    """
    depth = max(grown.depths)
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.42 * max(grown.depths.count(d) for d in range(1, depth + 1))))
    xy: dict[int, tuple[float, float]] = {-1: (0.0, 0.5)}
    for d in range(1, depth + 1):
        level = sorted((c for c in range(len(grown.tokens)) if grown.depths[c] == d),
                       key=lambda c: (-xy[grown.parents[c]][1], -grown.chances[c]))
        for j, c in enumerate(level):
            xy[c] = (float(d), 1 - (j + 0.5) / len(level))
    chosen, fed, path = set(grown.chosen), set(grown.fed), set(accepted)
    for c, parent in enumerate(grown.parents):
        (x0, y0), (x1, y1) = xy[parent], xy[c]
        colour = TREE if c in path else (MEASURED if c in chosen else "#DDDDDD")
        ax.plot([x0 + 0.18, x1 - 0.18], [y0, y1], color=colour, lw=2.2 if c in path else 0.9, zorder=1)
    for c, (x, y) in xy.items():
        if c < 0:
            ax.text(x, y, root_label, ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="white", ec=TREE))
            continue
        face = "#D5F0E6" if c in path else ("#DCE9F5" if c in chosen else "#F7F7F7")
        ax.text(x, y, f"{labels[c]}  {grown.chances[c]:.2f}", ha="center", va="center", fontsize=8, zorder=2,
                color="black" if c in chosen else "#888888",
                bbox=dict(boxstyle="round,pad=0.25", fc=face, ec="black" if c in fed else "#BBBBBB",
                          lw=1.4 if c in fed else 0.6))
    ax.set(xlim=(-0.5, depth + 0.5), ylim=(-0.03, 1.03),
           title=f"Dynamic tree: {len(grown.tokens)} candidates grown, {len(chosen)} verified (blue), the accepted path in green\n"
                 "black frame: expanded (fed to the draft); number: the draft's chance of the node's whole path")
    ax.set_xticks(range(depth + 1), ["root"] + [f"depth {d}" for d in range(1, depth + 1)])
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def plot_batch_sweep(report: Mapping) -> Figure:
    """Chapter 11: throughput and speedup over plain decoding against batch size, one line per method, the crossover marked."""
    runs = report["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))  # one colour a method, both panels
    for method in methods:
        points = sorted((r["batch"], r["tokens_per_s"], r["speedup"]) for r in runs if r["method"] == method)
        sizes = [p[0] for p in points]
        style = "--" if "transformers" in method else "o-"
        left.plot(sizes, [p[1] for p in points], style, label=method, color=colors[method])
        if not method.startswith("target only"):
            right.plot(sizes, [p[2] for p in points], "o-", label=method, color=colors[method])
    right.axhline(1.0, color="black", lw=0.8, label="plain decoding (ours)")
    where = report.get("crossover")
    if where:
        right.axvline(where, color="#D55E00", ls=":", lw=1.5, label=f"crossover: B = {where}")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["batch"] for r in runs}), labels=[str(b) for b in sorted({r["batch"] for r in runs})])
        ax.set_xlabel("batch size B (requests decoded together)")
        ax.grid(alpha=0.3)
    left.set(ylabel="total new tokens per second", title="Throughput")
    right.set(ylabel="speedup over plain decoding at the same B", title="What speculation buys")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    title = textwrap.fill(f"{report.get('pair', '')} ({report.get('device_name', '')})".split("\n")[0], 110)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_unrolled_mask(length: int, steps: int, tokens: Sequence[str] | None = None) -> Figure:
    """EAGLE-3's training-time test as a picture: which keys (columns) each query (rows) of the unrolled pass sees.

    Blocks are draft steps; in step 0 every position sees the true context up to itself (a causal
    triangle), and in step i it also sees its own keys of steps 1..i (one diagonal each).
    """
    from ..models.eagle3_head import unrolled_mask  # the head's own definition of the pattern

    mask = unrolled_mask(length, steps).numpy()
    fig, ax = plt.subplots(figsize=(1.2 + 0.42 * steps * length, 1.0 + 0.42 * steps * length))
    ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.4)
    edges = [s * length - 0.5 for s in range(1, steps)]
    for edge in edges:
        ax.axhline(edge, color="black", lw=1)
        ax.axvline(edge, color="black", lw=1)
    names = [f"{tokens[j] if tokens else j}" for j in range(length)] * steps
    ax.set_xticks(range(steps * length), names, rotation=90, fontsize=8)
    ax.set_yticks(range(steps * length), names, fontsize=8)
    for s in range(steps):
        centre = s * length + (length - 1) / 2
        ax.text(centre, -0.8, f"keys of step {s}", ha="center", va="bottom", fontsize=9)
        ax.text(-1.4, centre, f"step {s}", ha="right", va="center", rotation=90, fontsize=9)
    fig.suptitle("training-time test: what each draft step attends to (blue)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_data_scaling(runs: Sequence[Mapping], references: Mapping[str, float] | None = None, steps: int = 2) -> Figure:
    """Agreement of each draft step against training-corpus size (generated positions, log scale): on the held-out
    prompts (filled markers) and, where runs have it, on rows held aside from their own corpus (hollow markers),
    with horizontal reference lines (other drafts' held-out agreement)."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    sizes = [r["generated"] for r in runs]
    markers = ("o", "s", "^", "v")
    for i in range(min(steps, min(len(r["heldout"]) for r in runs))):
        color, marker = (MEASURED, PREDICTED, TREE)[i % 3], markers[i % len(markers)]
        ax.plot(sizes, [r["heldout"][i] for r in runs], marker=marker, ls="-", color=color,
                label=f"draft {i + 1}: held-out prompts")
        if all("held_aside" in r for r in runs):
            ax.plot(sizes, [r["held_aside"][i] for r in runs], marker=marker, ls=":", color=color, mfc="white",
                    label=f"draft {i + 1}: rows held aside from its corpus")
    for (name, value), style in zip((references or {}).items(), ("--", "-.", (0, (1, 3)))):
        ax.axhline(value, color="grey", ls=style, lw=1, label=f"{name}, held-out ({value:.2f})")
    ax.set_xscale("log")
    # Zoomed to the data (differences of a few hundredths), in steps of 0.1 so the scale reads at a glance.
    values = [y for line in ax.lines for y in line.get_ydata()]
    low, high = max(0.0, math.floor(min(values) * 10) / 10 - 0.1), min(1.0, math.ceil(max(values) * 10) / 10 + 0.1)
    ax.set(xlabel="training corpus: target-generated positions (log scale)", ylabel="greedy agreement (EAGLE-3 head)",
           ylim=(low, high), title="More data, same training budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    return fig
