"""Chapter 11: throughput against batch size, for plain decoding, speculative decoding at fixed K, and the cost-aware drafter.

Every method decodes the same left-padded batch of B prompts; at each B the methods take turns
(`median_seconds`), so a busy machine slows them alike and the ratios hold. The speedup is over
the course's own batched target-only loop at the same B; transformers' `generate` on the same
batch is timed too, so the baseline itself is checked.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..drafters import ModelDrafter
from ..loop.batch import left_pad
from ..loop.drafter import Drafter
from ..loop.generate import autoregressive_generate, speculative_generate
from ..loop.timer import median_seconds
from .timing import measure_step_costs

OURS, HF_GENERATE, COST_AWARE = "target only (ours)", "target only (transformers generate)", "cost-aware"


def padded_batch(prompts: Sequence[torch.Tensor], size: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` prompts (cycling through them as needed), left-padded: (input_ids, attention_mask)."""
    return left_pad([prompts[i % len(prompts)].view(-1) for i in range(size)], pad)


def same_tokens(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two padded batches of outputs agree on every column both have (transformers stops when every row has)."""
    width = min(a.shape[1], b.shape[1])
    return bool(torch.equal(a[:, :width].cpu(), b[:, :width].cpu()))


def fixed_k(k: int) -> str:
    """The name of speculative decoding at a fixed K."""
    return f"speculative, K = {k}"


def sweep_batch(
    target: PreTrainedModel, draft: PreTrainedModel | Drafter, prompts: Sequence[torch.Tensor], batch_sizes: Sequence[int],
    *, ks: Sequence[int] = (1, 2), max_new_tokens: int = 64, repeats: int = 2, cost_aware: bool = True,
    eos_token_id: int | None = None, pad_token_id: int = 0, progress: bool = True,
) -> list[dict]:
    """One row per (batch size, method): seconds, tokens/s, speedup over ours at that B, alpha, tokens per call, exactness."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be integers >= 1, got {list(batch_sizes)}")
    device, results = target.device, []
    for size in tqdm(batch_sizes, desc="batch sizes", disable=not progress):
        ids, mask = (t.to(device) for t in padded_batch(prompts, size, pad_token_id))
        common = dict(attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        drafters = {fixed_k(k): (draft, k) for k in ks}
        costs = None
        if cost_aware and isinstance(draft, torch.nn.Module):
            costs = measure_step_costs(target, draft, ids, max(ks), n_calls=20, attention_mask=mask)
            drafters[COST_AWARE] = (ModelDrafter(draft, costs=costs), max(ks))
        outputs, stats = {}, {}

        def run_ours():
            outputs[OURS] = autoregressive_generate(target, ids, **common)

        def run_hf():
            outputs[HF_GENERATE] = target.generate(ids, do_sample=False, **common)

        def spec(name, drafter, k):
            def run():
                out = speculative_generate(target, drafter, ids, k=k, **common)
                outputs[name], stats[name] = out.sequences, out.stats
            return run

        calls = {OURS: run_ours, HF_GENERATE: run_hf} | {n: spec(n, d, k) for n, (d, k) in drafters.items()}
        seconds = median_seconds(calls, device, repeats=repeats, warmup=1)
        tokens = int((outputs[OURS][:, ids.shape[1]:] != pad_token_id).sum()) if eos_token_id is not None else size * max_new_tokens
        for name, t in seconds.items():
            s = stats.get(name)
            results.append({
                "batch": size, "method": name, "k": drafters[name][1] if name in drafters else 0, "seconds": t,
                "tokens_per_s": tokens / t, "speedup": seconds[OURS] / t,
                "alpha": s.acceptance_rate if s else None, "tokens_per_call": s.mean_accepted_length if s else None,
                "matches_target": same_tokens(outputs[name], outputs[OURS]),
                "step_costs": None if costs is None or name != COST_AWARE else {"verify": dict(costs.verify),
                                                                                "measured": dict(costs.measured),
                                                                                "draft": costs.draft},
            })
    return results


def losing_sizes(results: Sequence[dict]) -> list[int]:
    """The batch sizes at which no fixed K beats plain decoding."""
    sizes = []
    for size in sorted({r["batch"] for r in results}):
        fixed = [r["speedup"] for r in results if r["batch"] == size and r["method"].startswith("speculative")]
        if fixed and max(fixed) < 1.0:
            sizes.append(size)
    return sizes


def crossover(results: Sequence[dict]) -> int | None:
    """The smallest batch size from which on (it and every larger size measured) no fixed K beats plain decoding, or None."""
    sizes, losing = sorted({r["batch"] for r in results}), set(losing_sizes(results))
    tail = None
    for size in reversed(sizes):
        if size not in losing:
            break
        tail = size
    return tail


def format_batch_sweep(results: Sequence[dict]) -> str:
    """A table: one line per batch size and method."""
    lines = [f"{'B':>3} {'method':<38} {'tok/s':>8} {'speedup':>8} {'alpha':>6} {'tok/call':>8} exact"]
    for r in results:
        alpha = "" if r["alpha"] is None or math.isnan(r["alpha"]) else f"{r['alpha']:.2f}"
        per_call = "" if r["tokens_per_call"] is None else f"{r['tokens_per_call']:.2f}"
        lines.append(f"{r['batch']:>3} {r['method']:<38} {r['tokens_per_s']:>8.1f} {r['speedup']:>7.2f}x {alpha:>6} "
                     f"{per_call:>8} {'yes' if r['matches_target'] else 'NO'}")
    where, losing = crossover(results), losing_sizes(results)
    lines.append("crossover: " + (f"from B = {where} on, no fixed K beats plain decoding" if where else
                                  "some fixed K still beats plain decoding at the largest batch measured"))
    if losing and losing[0] != where:
        lines.append(f"(no fixed K beat it at B = {', '.join(map(str, losing))})")
    return "\n".join(lines)
