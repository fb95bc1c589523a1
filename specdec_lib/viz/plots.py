"""Matplotlib figures of the speedup model and of measured runs (colour-blind-safe palette)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..bench.theory import estimate_alpha, expected_speedup, expected_tokens_per_step
from ..loop.generate import SpecStats, pool_steps

MEASURED, PREDICTED = "#0072B2", "#E69F00"  # Okabe-Ito blue and orange


def plot_k_sweep(runs: Sequence[Mapping], alpha: float, c: float, title: str = "") -> Figure:
    """Two panels over K: speedup and tokens per target call, predicted curves with measured points."""
    ks = [r["k"] for r in runs]
    grid = np.arange(1, max(ks) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(grid, [expected_speedup(alpha, k, c) for k in grid], "--", color=PREDICTED,
              label=f"predicted (α={alpha:.2f}, c={c:.2f})")
    left.plot(ks, [r["speedup"] for r in runs], "o", color=MEASURED, label="measured")
    left.axhline(1.0, color="black", lw=0.8)
    left.set(xlabel="K (draft tokens per step)", ylabel="speedup over target alone", title="Speedup vs K")
    right.plot(grid, [expected_tokens_per_step(alpha, k) for k in grid], "--", color=PREDICTED, label="predicted")
    right.plot(ks, [r["tokens_per_target_call"] for r in runs], "s", color=MEASURED, label="measured")
    right.set(xlabel="K (draft tokens per step)", ylabel="new tokens per target call", title="Tokens per target call")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_speedup_heatmap(k: int, points: Mapping[str, tuple[float, float]] | None = None, c_max: float = 1.0) -> Figure:
    """Predicted speedup at a fixed K over (alpha, c), with named (alpha, c) points marked."""
    alphas, costs = np.linspace(0.0, 0.99, 100), np.linspace(0.01, c_max, 100)
    grid = np.array([[expected_speedup(a, k, c) for a in alphas] for c in costs])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    mesh = ax.pcolormesh(alphas, costs, grid, cmap="viridis", shading="auto", vmin=0, vmax=max(2.0, grid.max()))
    contour = ax.contour(alphas, costs, grid, levels=[0.5, 1.0, 1.5, 2.0, 3.0], colors="white", linewidths=0.8)
    ax.clabel(contour, fmt="%.1fx", fontsize=8)
    for (name, (a, c)), marker in zip((points or {}).items(), "o^sDvP*"):
        ax.plot(a, c, marker, color="#D55E00", markeredgecolor="white", markersize=9, label=name)
    ax.set(xlabel="α (acceptance rate)", ylabel="c (draft cost / target cost)", title=f"Predicted speedup, K={k}")
    fig.colorbar(mesh, ax=ax, label="speedup over target alone")
    if points:
        ax.legend(fontsize=8, loc="upper left")
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
