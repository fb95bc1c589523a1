"""The library's one timer: wall-clock seconds synchronised on CUDA, several calls taken in turns.

Every timing in the course goes through here (the benchmark, c, verification costs, the CPU
kernels' choice, the notebooks), so a GPU's queued work is always waited for and machine noise
hits every contender alike. It sits in the loop's room, the lowest, so that every room can use it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping, TypeVar

import torch

T = TypeVar("T")


def sync_device(device: torch.device | str) -> None:
    """Wait for queued GPU work so wall-clock timings are honest."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def stopwatch(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[float, T]:
    """Run fn once; return (seconds, its result), with the device synchronised before and after."""
    sync_device(device)
    start = time.perf_counter()
    result = fn()
    sync_device(device)
    return time.perf_counter() - start, result


def median_seconds(
    calls: Mapping[T, Callable[[], Any]], device: torch.device | str = "cpu", repeats: int = 5, warmup: int = 1
) -> dict[T, float]:
    """Median seconds of each call over `repeats` rounds, the calls taking turns within each round.

    Interleaving means a slow spell of a busy machine slows every call alike, so their ratios hold
    even when the absolute figures swing. The first `warmup` rounds (allocation, kernel choice) don't count.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times: dict[T, list[float]] = {name: [] for name in calls}
    for i in range(warmup + repeats):
        for name, call in calls.items():
            elapsed, _ = stopwatch(call, device)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}
