"""Chapter 07: drafting without a draft model: look the last few tokens up earlier in the text (Saxena 2023).

If the last n tokens already occurred earlier in the prompt or the output, propose what followed
them there. Text that copies from its input (a summary, an edit, an answer quoting a passage)
repeats long stretches, so these guesses are often right, and they cost no model call at all.
When nothing matches, it proposes nothing and the step is a plain target step.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..loop.kv_cache import CacheSpec
from ..loop.sampling import Sampler
from .base import Proposal, Verified


def find_ngram_match(tokens: torch.Tensor, max_ngram_size: int = 3, min_ngram_size: int = 1) -> tuple[int, int] | None:
    """(start, n) of the most recent earlier occurrence of the longest suffix n-gram of `tokens` (L,), or None.

    n runs from max_ngram_size down to min_ngram_size and the first n with a match wins; "earlier"
    means the occurrence ends before the last token, so at least one token follows it.
    """
    length = tokens.shape[0]
    for n in range(min(max_ngram_size, length - 1), min_ngram_size - 1, -1):
        windows = tokens[: length - 1].unfold(0, n, 1)  # (L - n, n): every window ending before the last token
        hits = (windows == tokens[length - n :]).all(dim=1).nonzero()
        if len(hits):
            return int(hits[-1]), n  # the most recent match
    return None


def lookup_continuation(tokens: torch.Tensor, k: int, max_ngram_size: int = 3, min_ngram_size: int = 1) -> torch.Tensor:
    """Up to k tokens that followed the most recent earlier occurrence of the longest matching suffix n-gram.

    Returns an empty tensor when no suffix n-gram occurs earlier (or k is 0).
    """
    match = find_ngram_match(tokens, max_ngram_size, min_ngram_size) if k > 0 else None
    if match is None:
        return tokens.new_empty(0)
    start, n = match
    return tokens[start + n : start + n + k]


class PromptLookupDrafter:
    """Proposes the continuation of the longest recent n-gram found earlier in the text; no model, no calls."""

    needs_hidden_states = False
    calls = 0  # it runs no model

    def __init__(self, max_ngram_size: int = 3, min_ngram_size: int = 1):
        for name, value in (("max_ngram_size", max_ngram_size), ("min_ngram_size", min_ngram_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if min_ngram_size > max_ngram_size:
            raise ValueError(f"min_ngram_size ({min_ngram_size}) must not exceed max_ngram_size ({max_ngram_size})")
        self.max_ngram_size, self.min_ngram_size = max_ngram_size, min_ngram_size

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, cache: CacheSpec = CacheSpec()) -> None:
        """Nothing to reset: the lookup reads the sequence it is given."""

    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """The looked-up continuation, deterministic (q is one-hot on it, so sampling stays exact)."""
        return Proposal(lookup_continuation(seq[0], k, self.max_ngram_size, self.min_ngram_size))

    def update(self, seq: torch.Tensor, n_accepted: int, verified: Verified) -> None:
        """Nothing to roll back."""
