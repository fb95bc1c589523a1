"""The speedup model of Leviathan et al. (2023): tokens per step and walltime improvement from alpha and c."""

from __future__ import annotations

from typing import Sequence


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


def expected_tree_tokens_per_step(top_b: Sequence[float], branching: Sequence[int]) -> float:
    """Expected new tokens per target call of a static token tree (chapter 09), under i.i.d. acceptance.

    top_b[b - 1] is the probability that the target's token is among the draft's b best guesses.
    Along the accepted path, depth d is reached and accepted with probability top_b[branching[d] - 1]
    given depth d - 1 was, so the expectation is 1 + sum over d of the product of those rates.
    With branching (1,) * k it is the chain's formula with alpha = top_b[0].
    """
    if any(b > len(top_b) for b in branching):
        raise ValueError(f"branching {tuple(branching)} needs top-b rates up to b = {max(branching)}, got {len(top_b)}")
    expected, reach = 1.0, 1.0
    for b in branching:
        reach *= top_b[b - 1]
        expected += reach
    return expected
