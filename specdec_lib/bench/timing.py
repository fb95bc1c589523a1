"""What decoding costs here: c (a draft call over a target call) and verification over n tokens, timed with the loop's one timer.

The timer itself (`stopwatch`, `median_seconds`, `sync_device`) lives in `specdec_lib.loop.timer`
and is re-exported here, where the benchmark's readers look for it.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel

from ..drafters.model import StepCosts
from ..loop.batch import BatchRunner, Rows
from ..loop.kv_cache import CacheSpec, ModelRunner
from ..loop.timer import median_seconds, stopwatch, sync_device

__all__ = ["measure_cost_ratio", "measure_step_costs", "median_seconds", "stopwatch", "sync_device", "verify_cost_ratios"]


def _cached_call(
    model: PreTrainedModel, prefix: torch.Tensor, n_new: int = 1, loop: tuple[str, bool] = ("dynamic", False)
) -> Callable[[], None]:
    """A function making one cached forward pass over `n_new` tokens after `prefix`, at a fixed cache length.

    `loop` is (cache_implementation, compile) as in the loops being timed (chapter 10).
    """
    spec = CacheSpec(True, loop[0], loop[1], max_length=prefix.shape[1] + n_new)
    # A role per call length: several of these runners of one model are alive at once, each with its own cache.
    runner = ModelRunner(model, spec=spec, compiled_lengths=(n_new,), role=f"timing {n_new}")
    prefix = prefix.to(model.device)
    runner.logits(prefix)  # fill the cache
    step = torch.cat([prefix, prefix[:, -1:].repeat(1, n_new)], dim=1)

    def call() -> None:
        runner.logits(step, keep=n_new)
        runner.rollback(prefix.shape[1])  # same cache length every call

    return call


@torch.inference_mode()
def measure_cost_ratio(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    sequence: torch.Tensor,
    at_lengths: Sequence[int] | None = None,
    n_calls: int = 15,
    loop: tuple[str, bool] = ("dynamic", False),
) -> float:
    """c: median time of one cached draft call over one cached target call, averaged over cache lengths.

    `sequence` (1, L) is a real run's text; `at_lengths` are the cache lengths to measure at
    (default: L - 1). Draft and target calls alternate, so machine noise hits both alike. `loop` is
    (cache_implementation, compile) of the run whose c this is.
    """
    sequence = sequence.view(1, -1)
    ratios = []
    for length in at_lengths or [sequence.shape[1] - 1]:
        prefix = sequence[:, : max(1, min(length, sequence.shape[1] - 1))]
        calls = {"draft": _cached_call(draft, prefix, loop=loop), "target": _cached_call(target, prefix, loop=loop)}
        median = median_seconds(calls, target.device, repeats=n_calls, warmup=2)
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
    calls = {n: _cached_call(model, prefix, n) for n in sorted({1, *n_new})}
    median = median_seconds(calls, model.device, repeats=n_calls, warmup=2)
    return {n: median[n] / median[1] for n in n_new}


def measure_step_costs(
    target: PreTrainedModel, draft: PreTrainedModel, prefix: torch.Tensor, k: int, n_calls: int = 10,
    attention_mask: torch.Tensor | None = None,
) -> StepCosts:
    """This machine's `StepCosts` for drafting up to k tokens: verifying 1..k+1 new tokens, and c (chapter 07), fitted monotone.

    A batch `prefix` (B, n) with its `attention_mask` (chapter 11) measures them at that batch size:
    a call over B x n new tokens in units of one plain batched step, and one batched draft call.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if attention_mask is None and prefix.view(-1, prefix.shape[-1]).shape[0] == 1:
        verify = verify_cost_ratios(target, prefix, n_new=range(1, k + 2), n_calls=n_calls)
        return StepCosts.monotone(verify, measure_cost_ratio(target, draft, prefix.view(1, -1), n_calls=n_calls))
    rows = Rows.from_padded(prefix, torch.ones_like(prefix) if attention_mask is None else attention_mask)
    calls = {n: _batch_call(target, rows, n) for n in range(1, k + 2)} | {"draft": _batch_call(draft, rows, 1)}
    median = median_seconds(calls, target.device, repeats=n_calls, warmup=2)
    return StepCosts.monotone({n: median[n] / median[1] for n in range(1, k + 2)}, median["draft"] / median[1])


def _batch_call(model: PreTrainedModel, rows: Rows, n_new: int) -> Callable[[], None]:
    """A function making one batched cached call over n_new new tokens per row after `rows`, at fixed cache lengths."""
    runner = BatchRunner(model, CacheSpec())
    runner.forward(rows)  # fill the cache
    extra = rows.last(1).repeat(1, n_new)
    lengths = list(runner.kv.lengths)

    def call() -> None:
        runner.forward(rows, extra, keep=n_new)
        runner.kv.keep(lengths)  # same cache lengths every call

    return call
