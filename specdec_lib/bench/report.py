"""Chapter 05: bench results as text: the K sweep table, the pooled alpha and c, the device they ran on."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Mapping, Sequence

import torch

from .theory import expected_speedup


def chain_runs(runs: Sequence[Mapping]) -> list[Mapping]:
    """The runs of a sweep that drafted chains (not token trees)."""
    return [r for r in runs if not r.get("tree")]


def run_label(run: Mapping) -> str:
    """A sweep run's name in tables: its k, its tree's branching factors, or a dynamic tree's depth, top-k and budget."""
    tree = run.get("tree")
    if isinstance(tree, Mapping):  # DynamicTree.describe()
        return f"dynamic {tree['depth']},{tree['top_k']},{tree['budget']}" + (" +costs" if tree["costs"] else "")
    return str(tuple(tree)) if tree else str(run["k"])


def pooled_alpha_c(runs: Sequence[Mapping]) -> tuple[float, float]:
    """One (alpha, c) for a sweep's chain runs: alpha weighted by target calls, c averaged."""
    runs = chain_runs(runs) or runs
    calls = sum(r["target_calls"] for r in runs)
    return sum(r["alpha"] * r["target_calls"] for r in runs) / calls, statistics.fmean(r["c"] for r in runs)


def format_sweep(runs: Sequence[Mapping]) -> str:
    """A readable table of a k sweep (with transformers' speedup when it was timed)."""
    hf = "hf_speedup" in runs[0]
    width = max(3, *(len(run_label(r)) for r in runs))
    lines = [f"{'k':>{width}}{'tok/s':>9}{'target':>9}{'speedup':>9}{'predicted':>10}{'meas/pred':>10}"
             f"{'alpha':>7}{'c':>7}{'tok/call':>9}" + (f"{'HF':>9}" if hf else "")]
    for r in runs:
        predicted = r["predicted_speedup"]
        formula = (f"{predicted:>9.2f}x{r['speedup'] / predicted:>10.2f}" if predicted is not None
                   else f"{'-':>10}{'-':>10}")
        lines.append(
            f"{run_label(r):>{width}}{r['tokens_per_s']:>9.1f}{r['target_only_tokens_per_s']:>9.1f}{r['speedup']:>8.2f}x"
            f"{formula}{r['alpha']:>7.2f}{r['c']:>7.2f}{r['tokens_per_target_call']:>9.2f}"
            + (f"{r['hf_speedup']:>8.2f}x" if hf and "hf_speedup" in r else (f"{'-':>9}" if hf else ""))
        )
    if hf:
        lines.append(f"HF: {runs[0]['hf_method']}, speedup over the same target-only runs")
    if len(chain_runs(runs)) < len(runs):
        lines.append("rows in parentheses: token trees (branching factors per depth); dynamic D,K,B: trees grown "
                     "where the draft is confident (depth D, top-k K, budget B nodes; +costs: sized by the measured "
                     "step costs); the chain formula does not apply, and alpha is their acceptance per depth reached, "
                     "with every guess at that depth")
    return "\n".join(lines)


def format_report(report: Mapping) -> str:
    """A bench JSON report as text: the pair, where it ran, the K sweep and the pooled numbers."""
    alpha, c = report["alpha"], report["c"]
    best, predicted = report["best_k_measured"], report["best_k_predicted"]
    speedup = next(r["speedup"] for r in chain_runs(report["runs"]) if r["k"] == best)
    lines = [
        report["pair"],
        f"on {report['device_name']} ({report['device']}, {report['dtype']}), temperature {report['temperature']}, "
        f"{'up to ' if report.get('chat') else ''}{report['max_new_tokens']} new tokens x {len(report['prompts'])} prompts, median of {report['repeats']} repeats",
        format_sweep(report["runs"]),
        f"pooled alpha {alpha:.3f}, c {c:.3f}; best k measured {best} ({speedup:.2f}x), "
        f"predicted {predicted} ({expected_speedup(alpha, predicted, c):.2f}x)",
    ]
    trees = [r for r in report["runs"] if r.get("tree")]
    if trees:
        top = max(trees, key=lambda r: r["speedup"])
        lines.append(f"best tree measured {run_label(top)} ({top['speedup']:.2f}x, "
                     f"{top['tokens_per_target_call']:.2f} tokens per target call)")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    """A human-readable name of the device, e.g. the GPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine() or device.type
    return f"{name}, {os.cpu_count()} cores" if device.type == "cpu" else name
