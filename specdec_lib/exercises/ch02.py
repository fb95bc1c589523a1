"""Chapter 02: the greedy loop's numbers for a perfect draft."""

from __future__ import annotations

from .core import Mismatch, as_number, exercise


@exercise("02.2", "tokens per target call with draft=target at K = 4, as measured", 'check("02.2", tokens_per_call)')
def check_perfect_draft(tokens_per_call: float, k: int = 4) -> str:
    """A perfect draft's tokens per call: every draft passes and the bonus follows, so K + 1 (less at a run's end)."""
    value = as_number(tokens_per_call, "the answer", "hand in tokens per target call (new tokens / target calls) as a number")
    if value > k + 1 + 1e-9:
        raise Mismatch(f"{value:.2f} tokens per call is more than one call can give at K = {k}",
                       "a call checks K drafts and adds one token of its own: count new tokens / target calls")
    if value < k + 0.5:
        raise Mismatch(f"{value:.2f} tokens per call is too few for a draft that always agrees",
                       "with draft=target, how many of the K drafts pass, and what does the target add after them?")
    return (f"{value:.2f} tokens per call: all {k} drafts pass and the bonus follows, {k + 1} per call "
            "(a run's last call can add fewer, when max_new_tokens runs out)")


@exercise("02.3", "the most tokens one target call can give at k = 1", 'check("02.3", best_tokens_per_call)')
def check_k1_ceiling(best: float) -> str:
    """At K = 1 a call gives at most the accepted draft plus the bonus."""
    value = as_number(best, "the answer", "hand in the best possible tokens per call as a number")
    if abs(value - 2) > 1e-9:
        raise Mismatch(f"{value:g} is not the most one call can give at k = 1",
                       "count the draft token (if it passes) and the token the target adds in the same call")
    return "2 tokens per call at best (the draft and the bonus), for one draft call per step: c is paid every step"
