"""Chapter 05: the speedup formula with a verification that costs more than one call."""

from __future__ import annotations

from typing import Callable

from ..bench.theory import expected_tokens_per_step
from .core import Mismatch, as_number, exercise, learner_code

# (alpha, k, c, v): v is one target call over k + 1 new tokens, in single-token calls.
CASES = [(0.6, 3, 0.1, 1.0), (0.37, 2, 0.09, 1.3), (0.8, 5, 0.05, 2.2), (0.0, 2, 0.2, 1.1), (1.0, 4, 0.1, 1.6)]


@exercise("05.3", "your speedup_with_verify(alpha, k, c, v), v the cost of one call over k + 1 tokens",
          'check("05.3", speedup_with_verify)')
def check_speedup_with_verify(speedup_with_verify: Callable[[float, int, float, float], float]) -> str:
    """The learner's extended formula: expected tokens per step over (k c + v), on five hidden cases."""
    for alpha, k, c, v in CASES:
        got = learner_code(f"at alpha={alpha}, k={k}, c={c}, v={v}, speedup_with_verify",
                           lambda: speedup_with_verify(alpha, k, c, v))
        got = as_number(got, "what speedup_with_verify returned", "return one number")
        if abs(got - expected_tokens_per_step(alpha, k) / (k * c + v)) > 1e-6:
            hint = ("with v = 1 it must equal theory.expected_speedup(alpha, k, c)" if v == 1.0 else
                    "α = 1 and α = 0 are good sanity checks: K + 1 and 1 tokens per step" if alpha in (0.0, 1.0) else
                    "a step costs k draft calls and one verification call of cost v; it yields the expected tokens per step")
            raise Mismatch(f"at alpha={alpha}, k={k}, c={c}, v={v}, speedup_with_verify returned {got:.4f}", hint)
    return f"your formula agrees on {len(CASES)} hidden cases; with v = 1 it is chapter 05's"
