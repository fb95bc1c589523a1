"""Drafters: whatever proposes the tokens the target verifies. One kind of draft per file; they sit on the loop.

- registry: drafts by name (`register_draft`), for load_pair, the bench and training eval
- model: `ModelDrafter`, a small causal LM with its own KV cache (chapters 01-06), optionally
  stopping early when unsure, when a draft does not pay for its verification (`StepCosts`) or adapting
  its length (chapter 07), or filling a token tree (chapter 09); transformers' assisted generation
- prompt_lookup: `PromptLookupDrafter`, no model: continue an n-gram found earlier in the text (chapter 07)
- eagle: `EagleDrafter`, a draft that reads the target's features (chapter 08; its head is in `models`)

The protocol they follow (`Drafter`, `Proposal`, `Verified`, `DrafterBase`) is the loop's
(`specdec_lib.loop.drafter`), re-exported here.
"""

from __future__ import annotations

from ..loop.drafter import Drafter, DrafterBase, Proposal, TreeDrafter, Verified, as_drafter, register_adapter
from .registry import DRAFTS, DraftKind, draft_kind, draft_names, register_draft
from .model import HF_ASSISTED, ModelDrafter, StepCosts, check_same_vocab, hf_assisted_generate
from .prompt_lookup import (HF_PROMPT_LOOKUP, PROMPT_LOOKUP, PromptLookupDrafter, find_ngram_match, hf_prompt_lookup_generate,
                            lookup_continuation, match_length)
from .eagle import EagleDrafter

__all__ = ["DRAFTS", "DraftKind", "Drafter", "DrafterBase", "EagleDrafter", "HF_ASSISTED", "HF_PROMPT_LOOKUP", "ModelDrafter",
           "PROMPT_LOOKUP", "PromptLookupDrafter", "Proposal", "StepCosts", "TreeDrafter", "Verified", "as_drafter",
           "check_same_vocab", "draft_kind", "draft_names", "find_ngram_match", "hf_assisted_generate",
           "hf_prompt_lookup_generate", "lookup_continuation", "match_length", "register_adapter", "register_draft"]
