"""The drafter protocol: everything the speculative loop needs from whatever proposes tokens.

Shaped after transformers' `CandidateGenerator` (generation/candidate_generator.py): the loop asks
for candidates, verifies them with the target, and tells the drafter what happened. A new kind of
draft is a new class in this folder; the loop in `specdec_lib/loop/generate.py` never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel

from ..loop.kv_cache import CacheSpec
from ..loop.sampling import Sampler
from ..loop.tree import TokenTree


@dataclass
class Proposal:
    """Draft tokens for one step, (n,) with n <= k, and when sampling their draft distributions q, (n, V).

    `probs=None` means a deterministic proposal: the loop treats q as one-hot on each token, which
    keeps rejection sampling exact at any temperature.
    """

    tokens: torch.Tensor
    probs: torch.Tensor | None = None


@dataclass
class Verified:
    """What the target's verification call computed, handed to the drafter after every step."""

    logits: torch.Tensor  # (n + 1, V): the target's logits at each draft slot and the one after (a tree: root, then nodes)
    hidden: torch.Tensor | None  # (n_fed, d): last hidden states of the positions fed in this call (a tree's nodes last), if asked for
    first_position: int  # the sequence index of hidden[0] (the first position fed in this call)


@runtime_checkable
class Drafter(Protocol):
    """Proposes tokens for the target to verify; keeps whatever state it needs between steps."""

    needs_hidden_states: bool  # True: the loop asks the target for hidden states and passes them in `update`
    calls: int  # forward passes of the drafter's own model so far (0 for model-free drafters)

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, cache: CacheSpec = CacheSpec()) -> None:
        """Forget any previous run and get ready to draft after `input_ids` (1, n) for `target`, caching as `cache` says."""

    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """Up to k tokens to follow seq (1, L), on seq's device; fewer (even none) when it has no good guess."""

    def update(self, seq: torch.Tensor, n_accepted: int, verified: Verified) -> None:
        """After verification: n_accepted drafts passed and seq (1, L') is the sequence now; roll back or learn."""


@runtime_checkable
class TreeDrafter(Drafter, Protocol):
    """A drafter that can also fill a token tree with several guesses per position (chapter 09)."""

    def propose_tree(self, seq: torch.Tensor, tree: TokenTree) -> Proposal:
        """One token per node of `tree` (breadth-first), or of a shallower cut of it; greedy only."""
