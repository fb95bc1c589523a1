"""The drafter protocol: everything the speculative loop and the tools need from whatever proposes tokens.

Shaped after transformers' `CandidateGenerator` (generation/candidate_generator.py): the loop asks
for candidates, verifies them with the target, and tells the drafter what happened. A new kind of
draft is a new class in `specdec_lib/drafters/`; the loop in this room never changes. The loop
knows no drafter class: `as_drafter` turns a bare model into one through the adapters that the
drafters room registers (`register_adapter`), so this room imports no other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedModel

from .kv_cache import CacheSpec
from .sampling import Sampler
from .tree import TokenTree
from .tree_growth import DynamicTree

if TYPE_CHECKING:  # only for type hints: the step module imports this one
    from .step import StepRecord

# transformers' own version of a drafter, for the benchmark: (method name, fn(target, input_ids) -> sequences).
Counterpart = tuple[str, Callable[[PreTrainedModel, torch.Tensor], torch.Tensor]]


@dataclass
class Proposal:
    """Draft tokens for one step, (n,), and when sampling their draft distributions q, (n, V).

    `tree=None` means a chain: token i follows token i - 1. With a tree (chapter 09) token i is
    node i of it, breadth-first. `probs=None` means a deterministic proposal: the loop treats q as
    one-hot on each token, which keeps rejection sampling exact at any temperature.
    """

    tokens: torch.Tensor
    probs: torch.Tensor | None = None
    tree: TokenTree | None = None

    @property
    def shape(self) -> TokenTree | None:
        """The proposal as a tree: its own, a chain of width 1, or None when it holds no token."""
        if self.tree is not None:
            return self.tree
        return TokenTree.chain(self.tokens.shape[0]) if self.tokens.shape[0] else None


@dataclass
class Verified:
    """What the target's verification call computed, handed to the drafter after every step."""

    logits: torch.Tensor  # (n + 1, V): the target's logits at each draft slot and the one after (a tree: root, then nodes)
    hidden: torch.Tensor | None  # (n_fed, d'): the asked-for hidden states of the positions fed in this call (a tree's nodes last)
    first_position: int  # the sequence index of hidden[0] (the first position fed in this call)


@runtime_checkable
class Drafter(Protocol):
    """Proposes tokens for the target to verify; keeps whatever state it needs between steps.

    `DrafterBase` gives every member but `propose` a default.
    """

    model: nn.Module | None  # the drafter's own network, if any: load_pair puts CPU kernels on it, the bench times it
    needs_hidden_states: bool  # True: the loop asks the target for hidden states and passes them in `update`
    # Optional: which of them (transformers' `hidden_states` indices, concatenated on the last axis);
    # (-1,), the top layer's, when absent. An EAGLE-3 head reads three layers (chapter 08).
    calls: int  # forward passes of the drafter's own model so far (0 for model-free drafters)

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, cache: CacheSpec = CacheSpec()) -> None:
        """Forget any previous run and get ready to draft after `input_ids` (1, n) for `target`, caching as `cache` says."""

    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """Up to k tokens to follow seq (1, L), on seq's device; fewer (even none) when it has no good guess."""

    def update(self, seq: torch.Tensor, record: StepRecord, verified: Verified) -> None:
        """After verification: `record` says what passed (its `path` for a tree) and seq (1, L') is the sequence now."""

    def transformers_counterpart(self, *, k: int, max_new_tokens: int, eos_token_id: int | None = None) -> Counterpart | None:
        """transformers' own version of this drafter, for the benchmark to time next to ours, or None."""


@runtime_checkable
class TreeDrafter(Drafter, Protocol):
    """A drafter that can also fill a token tree with several guesses per position (chapter 09)."""

    def propose_tree(self, seq: torch.Tensor, tree: TokenTree | DynamicTree) -> Proposal:
        """One token per node of a fixed `tree` (breadth-first), or of a shallower cut of it; or a tree grown
        under a `DynamicTree`'s settings. Chosen by the draft alone (its top guesses), so any sampling stays exact."""


class DrafterBase:
    """Defaults for a drafter: no model, no hidden states, nothing to reset or roll back, no transformers counterpart."""

    model: nn.Module | None = None
    needs_hidden_states = False
    hidden_layers: tuple[int, ...] = (-1,)
    calls = 0

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, cache: CacheSpec = CacheSpec()) -> None:
        """Nothing to reset."""

    def update(self, seq: torch.Tensor, record: StepRecord, verified: Verified) -> None:
        """Nothing to roll back."""

    def transformers_counterpart(self, *, k: int, max_new_tokens: int, eos_token_id: int | None = None) -> Counterpart | None:
        """No counterpart in transformers."""
        return None


def hidden_request(drafter: Drafter) -> tuple[int, ...] | None:
    """The target hidden states the loop hands this drafter: transformers' `hidden_states` indices, or None for none."""
    return tuple(getattr(drafter, "hidden_layers", (-1,))) if drafter.needs_hidden_states else None


# type -> function wrapping an instance of it in a drafter; filled by the drafters room (a draft model -> ModelDrafter).
_ADAPTERS: dict[type, Callable[[Any], Drafter]] = {}


def register_adapter(cls: type, wrap: Callable[[Any], Drafter]) -> None:
    """Let `as_drafter` (and so `speculative_generate`) accept a bare `cls` instance, wrapped by `wrap`."""
    _ADAPTERS[cls] = wrap


def as_drafter(draft: Drafter | nn.Module) -> Drafter:
    """A drafter as given, or a bare model wrapped by the adapter registered for its class (the most specific wins)."""
    for cls in type(draft).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls](draft)
    if isinstance(draft, Drafter):
        return draft
    members = ("model", "needs_hidden_states", "calls", "start", "propose", "update", "transformers_counterpart")
    missing = [m for m in members if not hasattr(draft, m)]
    raise TypeError(f"draft must be a causal LM (a PreTrainedModel) or a Drafter; {type(draft).__name__} lacks "
                    f"{', '.join(missing)} (subclass specdec_lib.loop.drafter.DrafterBase for defaults)")
