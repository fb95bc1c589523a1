"""Chapter 04: the formula's K, and the size of a KV cache."""

from __future__ import annotations

from torch import nn

from ..bench.theory import expected_speedup, optimal_k
from .core import Mismatch, as_number, exercise


@exercise("04.2", "the K that theory.optimal_k recommends for your measured α and c",
          'check("04.2", k, alpha=alpha, c=c)')
def check_optimal_k(k: int, *, alpha: float, c: float) -> str:
    """The learner's K against the formula's best K for the α and c they measured."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise Mismatch(f"K = {k!r} is not a draft length", "K is a whole number of draft tokens, at least 1")
    if not (0 <= alpha <= 1 and c >= 0):
        raise ValueError(f"alpha must be in [0, 1] and c >= 0, got alpha={alpha!r}, c={c!r}")
    best = optimal_k(alpha, c)
    if expected_speedup(alpha, k, c) < expected_speedup(alpha, best, c) - 1e-12:
        raise Mismatch(f"K = {k} predicts {expected_speedup(alpha, k, c):.3f}x, and another K predicts more",
                       "evaluate theory.expected_speedup(alpha, K, c) for K = 1 … 16 and take the largest")
    return f"K = {k} predicts {expected_speedup(alpha, k, c):.3f}x, the formula's best for α = {alpha:.2f}, c = {c:.2f}"


def kv_cache_bytes(model: nn.Module, positions: int) -> int:
    """Bytes of a model's KV cache at `positions`: layers × (keys and values) × kv heads × head dim × positions × element size."""
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = next(model.parameters()).element_size()
    return config.num_hidden_layers * 2 * kv_heads * head_dim * positions * element


@exercise("04.4", "the target's KV cache at 8,192 positions, in MB (or MiB)", 'check("04.4", megabytes, model=target)')
def check_kv_cache_size(megabytes: float, *, model: nn.Module, positions: int = 8192) -> str:
    """The learner's cache size against the one computed from the model's config and dtype (MB or MiB accepted)."""
    value = as_number(megabytes, "the answer", "hand in the size in megabytes as a number")
    size = kv_cache_bytes(model, positions)
    for unit, scale in (("MB", 1e6), ("MiB", 2**20)):
        if abs(value * scale / size - 1) < 0.02:
            return f"{value:.1f} {unit} at {positions:,} positions: it grows by the same amount every token"
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hints = {  # a wrong factor the learner likely used -> what it misses
        0.5: "there are two cached tensors per layer: keys and values",
        heads / kv_heads: "this model shares keys and values between query heads (grouped-query attention): "
                          "count the kv heads in the shape 4.1 prints",
        1 / config.num_hidden_layers: "every layer keeps its own keys and values",
    }
    verdict = f"{value:.1f} MB is too {'small' if value * 2**20 < size else 'large'}"
    for factor, hint in hints.items():
        if factor != 1 and any(abs(value * scale / (size * factor) - 1) < 0.02 for scale in (1e6, 2**20)):
            raise Mismatch(verdict, hint)
    raise Mismatch(verdict,
                   "multiply layers × 2 (keys, values) × kv heads × head dim × positions × bytes per number "
                   f"(this model's parameters are {next(model.parameters()).dtype})")
