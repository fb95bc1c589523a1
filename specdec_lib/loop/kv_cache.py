"""Chapter 04: KV caches and their rollback after a rejection, on transformers' own cache classes."""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


def max_positions(model: PreTrainedModel) -> int | None:
    """The longest sequence the model can attend over (gpt2: 1024), or None when unbounded."""
    return getattr(model.config, "max_position_embeddings", None)


def croppable_cache(model: PreTrainedModel) -> DynamicCache:
    """A DynamicCache for `model` that can be rolled back, sliding-window and linear-attention layers included.

    Built from the config, a sliding-window layer keeps only its last window of keys and values, so
    it can't forget rejected drafts once the window is full. `activate_past_recording` (what
    transformers' assisted generation does for its draft) makes such layers keep everything until
    the next `crop`, which then trims them back to the window. Full-attention layers don't change.
    """
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    return cache


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Roll the cache back so it holds the first `length` positions only (no-op if already shorter)."""
    # transformers >= 5 takes the number of tokens to remove, as a negative int. crop(0) is called
    # too: it trims recording sliding-window layers back to their window and changes nothing else.
    cache.crop(-max(cache.get_seq_length() - length, 0))


class ModelRunner:
    """Feeds a model a growing sequence: all of it without a cache, only the unseen tail with one."""

    def __init__(self, model: PreTrainedModel, use_cache: bool = True, croppable: bool = True):
        self.model = model
        # Plain decoding never rolls back, so it keeps transformers' default (window-sized) cache.
        cache = croppable_cache(model) if croppable else DynamicCache(config=model.config)
        self.cache = cache if use_cache else None
        self.calls = 0

    @property
    def cached_length(self) -> int:
        """How many leading positions of the sequence the cache already holds."""
        return 0 if self.cache is None else self.cache.get_seq_length()

    @torch.inference_mode()  # a runner only decodes; callers outside the loop need no context manager
    def forward(self, seq: torch.Tensor, keep: int = 1, hidden: bool = False, **tree_inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass over seq (1, L): logits of the last `keep` positions (keep, V), and with `hidden`
        the last layer's hidden states of every position fed in this call (n_fed, d).

        `tree_inputs` (position_ids, a 4D attention_mask) go to the model as given: chapter 09's trees.
        """
        new = seq[:, self.cached_length :].to(self.model.device)
        out = self.model(input_ids=new, cache=self.cache, use_cache=self.cache is not None,
                         logits_to_keep=keep, output_hidden_states=hidden, **tree_inputs)
        self.calls += 1
        return out.logits[0, -keep:], out.hidden_states[-1][0] if hidden else None

    def logits(self, seq: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Run one forward pass over seq (1, L) and return the logits of its last `keep` positions, (keep, V)."""
        return self.forward(seq, keep)[0]

    def rollback(self, length: int) -> None:
        """Forget every cached position from `length` on, e.g. those of rejected draft tokens."""
        if self.cache is not None:
            crop_cache(self.cache, length)
