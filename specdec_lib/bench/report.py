"""Chapter 05: bench results as text: the K sweep table, the pooled alpha and c, the device they ran on."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Mapping, Sequence

import torch

from .theory import expected_speedup


def pooled_alpha_c(runs: Sequence[Mapping]) -> tuple[float, float]:
    """One (alpha, c) for a sweep: alpha weighted by target calls, c averaged."""
    calls = sum(r["target_calls"] for r in runs)
    return sum(r["alpha"] * r["target_calls"] for r in runs) / calls, statistics.fmean(r["c"] for r in runs)


def format_sweep(runs: Sequence[Mapping]) -> str:
    """A readable table of a k sweep (with transformers' speedup when it was timed)."""
    hf = "hf_speedup" in runs[0]
    lines = [f"{'k':>3}{'tok/s':>9}{'target':>9}{'speedup':>9}{'predicted':>10}{'meas/pred':>10}"
             f"{'alpha':>7}{'c':>7}{'tok/call':>9}" + (f"{'HF':>9}" if hf else "")]
    for r in runs:
        lines.append(
            f"{r['k']:>3}{r['tokens_per_s']:>9.1f}{r['target_only_tokens_per_s']:>9.1f}{r['speedup']:>8.2f}x"
            f"{r['predicted_speedup']:>9.2f}x{r['speedup'] / r['predicted_speedup']:>10.2f}"
            f"{r['alpha']:>7.2f}{r['c']:>7.2f}{r['tokens_per_target_call']:>9.2f}"
            + (f"{r['hf_speedup']:>8.2f}x" if hf else "")
        )
    if hf:
        lines.append(f"HF: {runs[0]['hf_method']}, speedup over the same target-only runs")
    return "\n".join(lines)


def format_report(report: Mapping) -> str:
    """A bench JSON report as text: the pair, where it ran, the K sweep and the pooled numbers."""
    alpha, c = report["alpha"], report["c"]
    best, predicted = report["best_k_measured"], report["best_k_predicted"]
    speedup = next(r["speedup"] for r in report["runs"] if r["k"] == best)
    return "\n".join([
        report["pair"],
        f"on {report['device_name']} ({report['device']}, {report['dtype']}), temperature {report['temperature']}, "
        f"{report['max_new_tokens']} new tokens x {len(report['prompts'])} prompts, median of {report['repeats']} repeats",
        format_sweep(report["runs"]),
        f"pooled alpha {alpha:.3f}, c {c:.3f}; best k measured {best} ({speedup:.2f}x), "
        f"predicted {predicted} ({expected_speedup(alpha, predicted, c):.2f}x)",
    ])


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
