"""Drafters: whatever proposes the tokens the target verifies. One kind of draft per file.

- base: the `Drafter` protocol the loop talks to, with `Proposal` and `Verified`
- model: `ModelDrafter`, a small causal LM with its own KV cache (chapters 01-06), optionally
  stopping early when unsure, when a draft does not pay for its verification (`StepCosts`) or adapting
  its length (chapter 07), or filling a token tree (chapter 09)
- prompt_lookup: `PromptLookupDrafter`, no model: continue an n-gram found earlier in the text (chapter 07)
- eagle: `EagleDrafter` and its `EagleHead`, a draft that reads the target's features (chapter 08)
"""

from __future__ import annotations

from torch import nn

from .base import Drafter, Proposal, TreeDrafter, Verified
from .eagle import EagleDrafter, EagleHead
from .model import ModelDrafter, StepCosts, check_same_vocab
from .prompt_lookup import PromptLookupDrafter, find_ngram_match, lookup_continuation, match_length


def as_drafter(draft: Drafter | nn.Module) -> Drafter:
    """A drafter as given, an EAGLE head in an EagleDrafter, or a plain draft model wrapped in a ModelDrafter."""
    if isinstance(draft, EagleHead):
        return EagleDrafter(draft)
    if isinstance(draft, nn.Module) and hasattr(draft, "config"):
        return ModelDrafter(draft)
    if isinstance(draft, Drafter):
        return draft
    raise TypeError(f"draft must be a causal LM or a Drafter (start/propose/update), got {type(draft).__name__}")


__all__ = ["Drafter", "EagleDrafter", "EagleHead", "ModelDrafter", "TreeDrafter", "PromptLookupDrafter", "Proposal", "StepCosts", "Verified", "as_drafter", "check_same_vocab",
           "find_ngram_match", "lookup_continuation", "match_length"]
