"""The speedup model of Leviathan et al. (2023): tokens per step and walltime improvement from alpha and c."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel

from .kv_cache import ModelRunner


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Expected new tokens per target call, (1 - alpha^(k+1)) / (1 - alpha), for i.i.d. acceptance alpha."""
    if alpha >= 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, c: float) -> float:
    """Predicted walltime speedup over the target alone: tokens per step / (k c + 1)."""
    return expected_tokens_per_step(alpha, k) / (k * c + 1)


def optimal_k(alpha: float, c: float, k_max: int = 16) -> int:
    """The k in 1..k_max with the highest predicted speedup."""
    return max(range(1, k_max + 1), key=lambda k: expected_speedup(alpha, k, c))


def estimate_alpha(proposed: Sequence[int], accepted: Sequence[int]) -> float:
    """Maximum-likelihood i.i.d. acceptance rate: accepted drafts / drafts that were actually tested.

    A step tests its drafts in order and stops at the first rejection, so it contributes
    `accepted` successes and one failure unless everything it proposed passed.
    """
    successes = sum(accepted)
    trials = successes + sum(a < p for p, a in zip(proposed, accepted))
    return successes / trials if trials else float("nan")


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_timer(model: PreTrainedModel, prefix: torch.Tensor) -> Callable[[], float]:
    """A function that times one cached single-token forward pass after `prefix`, at a fixed cache length."""
    runner = ModelRunner(model, use_cache=True)
    prefix = prefix.to(model.device)
    runner.logits(prefix)  # fill the cache
    step = torch.cat([prefix, prefix[:, -1:]], dim=1)

    def timed_call() -> float:
        sync_device(model.device)
        start = time.perf_counter()
        runner.logits(step)
        sync_device(model.device)
        runner.rollback(prefix.shape[1])  # same cache length every call
        return time.perf_counter() - start

    return timed_call


@torch.inference_mode()
def measure_cost_ratio(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    sequence: torch.Tensor,
    at_lengths: Sequence[int] | None = None,
    n_calls: int = 15,
) -> float:
    """c: median time of one cached draft call over one cached target call, averaged over cache lengths.

    `sequence` (1, L) is a real run's text; `at_lengths` are the cache lengths to measure at
    (default: L - 1). Draft and target calls alternate, so machine noise hits both alike.
    """
    sequence = sequence.view(1, -1)
    ratios = []
    for length in at_lengths or [sequence.shape[1] - 1]:
        prefix = sequence[:, : max(1, min(length, sequence.shape[1] - 1))]
        timers = {"draft": _decode_timer(draft, prefix), "target": _decode_timer(target, prefix)}
        times: dict[str, list[float]] = {"draft": [], "target": []}
        for i in range(n_calls + 2):
            for name, timer in timers.items():
                elapsed = timer()
                if i >= 2:  # the first calls warm up
                    times[name].append(elapsed)
        ratios.append(statistics.median(times["draft"]) / statistics.median(times["target"]))
    return statistics.fmean(ratios)
