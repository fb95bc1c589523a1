"""Chapter 08: an EAGLE-style draft that reads the target's features (Li et al., ICML 2024; SafeAILab/EAGLE).

The target's top hidden state at position j (its "feature", after the final norm) already decides
token j + 1: the LM head is one matrix away. The draft only has to move that feature one step on.
Its input at position j is fc([embedding of token j + 1 ; feature j]); its decoder layers predict
the feature at j + 1, and a head that scores part of the vocabulary (rows of the target's head)
turns it into token j + 2. Drafting runs in feature space: each predicted feature is the next
input. After every verification the target's true features of the accepted tokens replace the
draft's guesses, and they come free: the verification call computed them anyway.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

from ..loop.drafter import DrafterBase, Proposal, Verified
from ..loop.kv_cache import CacheSpec, DynamicKV, croppable_cache, max_positions
from ..loop.sampling import Sampler
from ..loop.step import StepRecord
from .model import check_same_vocab


class FeatureHead(Protocol):
    """What the drafter needs of an EAGLE head (`specdec_lib.models.eagle_head.EagleHead` is the course's)."""

    config: object

    def features_forward(self, features: torch.Tensor, tokens: torch.Tensor, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, n, d) at positions j and tokens (B, n) at j + 1 -> (predicted features at j + 1, its logits)."""

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The head's logits over the target's whole vocabulary."""


class EagleDrafter(DrafterBase):
    """Drafts with an EAGLE head: autoregressive in feature space, re-anchored on the target's true features every step.

    The head keeps its own dynamic KV cache, whatever cache the target uses. On the first step it has
    no features yet and proposes nothing: that step is the target's prefill, which returns them.
    """

    needs_hidden_states = True

    def __init__(self, head: FeatureHead):
        if not (isinstance(head, nn.Module) and hasattr(head, "features_forward") and hasattr(head, "full_logits")):
            raise TypeError(f"EagleDrafter needs an EAGLE head such as models.eagle_head.EagleHead "
                            f"(an nn.Module with features_forward and full_logits), got {type(head).__name__}")
        self.model = head  # the protocol's `model`: load_pair's CPU kernels reach it, the bench times it
        self.calls = 0
        self.kv: DynamicKV | None = None
        self.features: torch.Tensor | None = None  # (n, d): the target's features of positions 0..n-1
        self.trusted = 0  # head cache entries built from true features only

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, cache: CacheSpec = CacheSpec()) -> None:
        """Check the head fits the target and start with no features and an empty head cache."""
        check_same_vocab(target, self.model)
        if target.config.hidden_size != self.model.config.hidden_size:
            raise ValueError(f"the EAGLE head reads {self.model.config.hidden_size}-wide features; "
                             f"the target's are {target.config.hidden_size} wide")
        self.kv = DynamicKV(croppable_cache(self.model))
        self.features = torch.empty(0, self.model.config.hidden_size, device=self.model.device, dtype=self.model.dtype)
        self.calls, self.trusted = 0, 0

    @torch.inference_mode()
    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """Up to k tokens after seq (1, L): first feed the accepted tokens' true features, then its own predictions."""
        length, done = seq.shape[1], self.kv.length
        limit = max_positions(self.model)
        if limit is not None:
            k = max(0, min(k, limit - length + 1))
        # Position j needs the feature at j and token j + 1: features must reach position L - 2.
        if k == 0 or length < 2 or self.features.shape[0] < length - 1 or done >= length - 1:
            return Proposal(seq.new_empty(0))
        features = self.features[done : length - 1][None]
        tokens_in = seq[:, done + 1 :].to(self.model.device)
        self.trusted = length - 1
        tokens, probs = [], []
        for _ in range(k):
            predicted, sub = self.model.features_forward(features, tokens_in, self.kv.cache)
            self.calls += 1
            token, q = sampler.choose(self.model.full_logits(sub[0, -1]))
            tokens.append(token.view(1))
            probs.append(q)
            features, tokens_in = predicted[:, -1:], token.view(1, 1)
        drafted = torch.cat(tokens).to(seq.device)
        return Proposal(drafted, None if sampler.greedy else torch.stack(probs).to(seq.device))

    def update(self, seq: torch.Tensor, record: StepRecord, verified: Verified) -> None:
        """Keep the target's features of every position now in seq but the newest; drop cache entries built on guesses."""
        if verified.hidden is None:
            raise ValueError("EagleDrafter needs the target's hidden states; the loop passes them when needs_hidden_states is True")
        hidden = verified.hidden.to(self.features.device, self.features.dtype)
        # Features of rejected drafts are cut off; the newest token has no feature until it is fed.
        self.features = torch.cat([self.features[: verified.first_position], hidden])[: seq.shape[1] - 1]
        self.kv.rollback(min(self.trusted, self.kv.length))
