"""Chapter 07: drafting without a draft model: look the last few tokens up earlier in the text (Saxena 2023).

If the last n tokens already occurred earlier in the prompt or the output, propose what followed
them there. Text that copies from its input (a summary, an edit, an answer quoting a passage)
repeats long stretches, so these guesses are often right, and they cost no model call at all.
When nothing matches, it proposes nothing and the step is a plain target step.

How many tokens to propose: a 1-token coincidence is weak evidence, a stretch of 10 tokens that
already matches is strong. With `adaptive=True` (the drafter's default) a lookup proposes as many
tokens as the match is long, up to k, so guesses grow while the text is being copied and stay short
(cheap to verify) otherwise. transformers' `prompt_lookup_num_tokens` always proposes k (`adaptive=False`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel

from ..loop.batch import BatchProposal, BatchVerified, Rows
from ..loop.drafter import Counterpart, DrafterBase, Proposal
from ..loop.kv_cache import CacheSpec
from ..loop.sampling import Sampler
from ..loop.step import StepRecord
from .registry import register_draft

PROMPT_LOOKUP = "prompt-lookup"  # its name: load_pair(draft=...), bench --draft, training eval --drafts
HF_PROMPT_LOOKUP = "HF prompt lookup"  # the benchmark's name for transformers' counterpart


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


def match_length(tokens: torch.Tensor, start: int, n: int, limit: int) -> int:
    """How long the match at `start` really is: the n matched tokens, extended back while both stretches agree, capped at limit."""
    end, length = start + n, tokens.shape[0]
    m = min(limit, end)
    earlier, recent = tokens[end - m : end].flip(0), tokens[length - m :].flip(0)
    return int((earlier == recent).long().cumprod(0).sum())  # equal tokens counted back from the ends, up to the first difference


def lookup_continuation(
    tokens: torch.Tensor, k: int, max_ngram_size: int = 3, min_ngram_size: int = 1, adaptive: bool = False
) -> torch.Tensor:
    """Up to k tokens that followed the most recent earlier occurrence of the longest matching suffix n-gram.

    With `adaptive`, at most as many tokens as the match is long (`match_length`, capped at k).
    Returns an empty tensor when no suffix n-gram occurs earlier (or k is 0).
    """
    match = find_ngram_match(tokens, max_ngram_size, min_ngram_size) if k > 0 else None
    if match is None:
        return tokens.new_empty(0)
    start, n = match
    count = match_length(tokens, start, n, k) if adaptive else k
    return tokens[start + n : start + n + count]


class PromptLookupDrafter(DrafterBase):
    """Proposes the continuation of the longest recent n-gram found earlier in the text; no model, no calls.

    adaptive=True (default) proposes as many tokens as the match is long, up to k; False always up to k.
    Nothing to start or roll back: the lookup reads the sequence it is given.
    """

    def __init__(self, max_ngram_size: int = 3, min_ngram_size: int = 1, adaptive: bool = True):
        for name, value in (("max_ngram_size", max_ngram_size), ("min_ngram_size", min_ngram_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if min_ngram_size > max_ngram_size:
            raise ValueError(f"min_ngram_size ({min_ngram_size}) must not exceed max_ngram_size ({max_ngram_size})")
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {adaptive!r}")
        self.max_ngram_size, self.min_ngram_size, self.adaptive = max_ngram_size, min_ngram_size, adaptive

    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """The looked-up continuation, deterministic (q is one-hot on it, so sampling stays exact)."""
        return Proposal(lookup_continuation(seq[0], k, self.max_ngram_size, self.min_ngram_size, self.adaptive))

    def start_batch(self, target: PreTrainedModel, rows: Rows, *, cache: CacheSpec = CacheSpec()) -> None:
        """Nothing to reset: every row is looked up in its own text (chapter 11)."""

    def propose_batch(self, rows: Rows, k: int, sampler: Sampler) -> BatchProposal:
        """Each row's own lookup: rows propose different numbers of tokens (ragged), padded at the end."""
        drafts = [lookup_continuation(rows.row(b), k, self.max_ngram_size, self.min_ngram_size, self.adaptive)
                  for b in range(rows.size)]
        return BatchProposal.ragged(drafts, rows.pad, rows.tokens.device)

    def update_batch(self, rows: Rows, records: Sequence[StepRecord], verified: BatchVerified) -> None:
        """Nothing to roll back."""

    def select_rows(self, rows: Sequence[int]) -> None:
        """Nothing kept per row."""

    def transformers_counterpart(self, *, k: int, max_new_tokens: int, eos_token_id: int | None = None) -> Counterpart:
        """transformers' prompt lookup decoding with this n-gram size (it always proposes k)."""
        return HF_PROMPT_LOOKUP, lambda target, ids: hf_prompt_lookup_generate(
            target, ids, max_new_tokens=max_new_tokens, k=k, max_ngram_size=self.max_ngram_size, eos_token_id=eos_token_id)


def hf_prompt_lookup_generate(
    target: PreTrainedModel, input_ids: torch.Tensor, *, max_new_tokens: int, k: int, max_ngram_size: int = 3,
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """transformers' prompt lookup decoding, greedy, proposing up to k tokens from n-grams of up to max_ngram_size."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id, pad_token_id=0,
                              prompt_lookup_num_tokens=k, max_matching_ngram_size=max_ngram_size)
    ids = input_ids.to(target.device)
    return target.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)


register_draft(PROMPT_LOOKUP, lambda target: PromptLookupDrafter(), "prompt lookup (no draft model)")
