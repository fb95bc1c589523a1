"""The speedup model of Leviathan et al. (2023): tokens per step and walltime improvement from alpha and c."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Sequence, TypeVar

import torch
from transformers import PreTrainedModel

from .kv_cache import ModelRunner

T = TypeVar("T")


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


def _decode_timer(model: PreTrainedModel, prefix: torch.Tensor, n_new: int = 1) -> Callable[[], float]:
    """A function that times one cached forward pass over `n_new` tokens after `prefix`, at a fixed cache length."""
    runner = ModelRunner(model, use_cache=True)
    prefix = prefix.to(model.device)
    runner.logits(prefix)  # fill the cache
    step = torch.cat([prefix, prefix[:, -1:].repeat(1, n_new)], dim=1)

    def timed_call() -> float:
        sync_device(model.device)
        start = time.perf_counter()
        runner.logits(step, keep=n_new)
        sync_device(model.device)
        runner.rollback(prefix.shape[1])  # same cache length every call
        return time.perf_counter() - start

    return timed_call


def _interleaved_medians(timers: Mapping[T, Callable[[], float]], n_calls: int, warmup: int = 2) -> dict[T, float]:
    """Median seconds of each timer over n_calls rounds, taking turns so machine noise hits all alike."""
    times: dict[T, list[float]] = {name: [] for name in timers}
    for i in range(warmup + n_calls):
        for name, timer in timers.items():
            elapsed = timer()
            if i >= warmup:  # the first calls allocate and pick kernels
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


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
        median = _interleaved_medians(timers, n_calls)
        ratios.append(median["draft"] / median["target"])
    return statistics.fmean(ratios)


@torch.inference_mode()
def verify_cost_ratios(
    model: PreTrainedModel, prefix: torch.Tensor, n_new: Sequence[int] = (1, 2, 3, 5), n_calls: int = 10
) -> dict[int, float]:
    """Time of one cached call over n new tokens, in single-token calls; the formula assumes 1.0 for K+1 tokens."""
    if not n_new or min(n_new) < 1:
        raise ValueError(f"n_new must list token counts >= 1, got {n_new!r}")
    prefix = prefix.view(1, -1)
    median = _interleaved_medians({n: _decode_timer(model, prefix, n) for n in sorted({1, *n_new})}, n_calls)
    return {n: median[n] / median[1] for n in n_new}
