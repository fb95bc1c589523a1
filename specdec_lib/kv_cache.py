"""Chapter 04: KV caches and their rollback after a rejection, on transformers' own cache classes."""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


def max_positions(model: PreTrainedModel) -> int | None:
    """The longest sequence the model can attend over (gpt2: 1024), or None when unbounded."""
    return getattr(model.config, "max_position_embeddings", None)


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Roll the cache back so it holds the first `length` positions only (no-op if already shorter)."""
    # transformers >= 5 takes the number of tokens to remove, as a negative int.
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class ModelRunner:
    """Feeds a model a growing sequence: all of it without a cache, only the unseen tail with one."""

    def __init__(self, model: PreTrainedModel, use_cache: bool = True):
        self.model = model
        self.cache = DynamicCache(config=model.config) if use_cache else None
        self.calls = 0

    @property
    def cached_length(self) -> int:
        """How many leading positions of the sequence the cache already holds."""
        return 0 if self.cache is None else self.cache.get_seq_length()

    def logits(self, seq: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Run one forward pass over seq (1, L) and return the logits of its last `keep` positions, (keep, V)."""
        new = seq[:, self.cached_length :]
        out = self.model(input_ids=new, cache=self.cache, use_cache=self.cache is not None, logits_to_keep=keep)
        self.calls += 1
        return out.logits[0, -keep:]

    def rollback(self, length: int) -> None:
        """Forget every cached position from `length` on, e.g. those of rejected draft tokens."""
        if self.cache is not None:
            crop_cache(self.cache, length)
