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

from typing import Protocol, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from ..loop.batch import BatchKV, BatchProposal, BatchVerified, Rows, batch_cache, realign
from ..loop.drafter import DrafterBase, Proposal, Verified
from ..loop.kv_cache import CacheSpec, DynamicKV, croppable_cache, max_positions
from ..loop.sampling import Sampler
from ..loop.step import StepRecord
from ..loop.tree import TokenTree, tree_attention_inputs
from ..loop.tree_growth import Candidates, DynamicTree, grow
from .model import check_same_vocab


class FeatureHead(Protocol):
    """What the drafter needs of an EAGLE head (the course's: `models.eagle3_head.Eagle3Head` and `models.eagle_head.EagleHead`)."""

    config: object
    target_layers: tuple[int, ...]  # the target's hidden states it reads (transformers' `hidden_states` indices)

    def fuse(self, hidden: torch.Tensor) -> torch.Tensor:
        """Those hidden states, concatenated (..., n_layers * d_target) -> the head's input feature (..., d)."""

    def features_forward(self, features: torch.Tensor, tokens: torch.Tensor, cache=None, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, n, d) at positions j and tokens (B, n) at j + 1 -> (predicted features at j + 1, its logits);
        `inputs`: a batch's attention_mask and position_ids."""

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The head's logits over the target's whole vocabulary."""


class EagleDrafter(DrafterBase):
    """Drafts with an EAGLE head: autoregressive in feature space, re-anchored on the target's true features every step.

    The head keeps its own dynamic KV cache, whatever cache the target uses. On the first step it has
    no features yet and proposes nothing: that step is the target's prefill, which returns them.
    """

    needs_hidden_states = True

    def __init__(self, head: FeatureHead):
        members = ("features_forward", "full_logits", "fuse", "target_layers")
        if not (isinstance(head, nn.Module) and all(hasattr(head, m) for m in members)):
            raise TypeError(f"EagleDrafter needs an EAGLE head such as models.eagle_head.EagleHead or "
                            f"models.eagle3_head.Eagle3Head (an nn.Module with {', '.join(members)}), got {type(head).__name__}")
        self.model = head  # the protocol's `model`: load_pair's CPU kernels reach it, the bench times it
        self.calls = 0
        self.kv: DynamicKV | None = None
        self.features: torch.Tensor | None = None  # (n, d): the target's features of positions 0..n-1
        self.trusted = 0  # head cache entries built from true features only
        self.last_tree: Candidates | None = None  # every node the last tree step grew, with its chance (chapter 09)

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The target's hidden states the loop hands `update`: the head's (EAGLE: the top one; EAGLE-3: three)."""
        return tuple(self.model.target_layers)

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, cache: CacheSpec = CacheSpec()) -> None:
        """Check the head fits the target and start with no features and an empty head cache."""
        check_same_vocab(target, self.model)
        width = getattr(self.model.config, "target_hidden_size", self.model.config.hidden_size)
        if target.config.hidden_size != width:
            raise ValueError(f"the EAGLE head reads {width}-wide features; the target's are {target.config.hidden_size} wide")
        if max(self.hidden_layers) > target.config.num_hidden_layers:
            raise ValueError(f"the EAGLE head reads the target's hidden states {self.hidden_layers}; "
                             f"the target has {target.config.num_hidden_layers} layers")
        self.kv = DynamicKV(croppable_cache(self.model))
        self.features = torch.empty(0, self.model.config.hidden_size, device=self.model.device, dtype=self.model.dtype)
        self.calls, self.trusted = 0, 0

    def _root(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Feed the tokens accepted since the last step with their true features: (the feature predicted for
        seq's last position (1, 1, d), the head's logits for the token after it (V_draft,)); None without features yet."""
        length, done = seq.shape[1], self.kv.length
        # Position j needs the feature at j and token j + 1: features must reach position L - 2.
        if length < 2 or self.features.shape[0] < length - 1 or done >= length - 1:
            return None
        features = self.features[done : length - 1][None]
        tokens_in = seq[:, done + 1 :].to(self.model.device)
        self.trusted = length - 1
        predicted, sub = self.model.features_forward(features, tokens_in, self.kv.cache)
        self.calls += 1
        return predicted[:, -1:], sub[0, -1]

    def _room(self, seq: torch.Tensor, k: int) -> int:
        """k, cut so that no draft goes past the head's context limit."""
        limit = max_positions(self.model)
        return k if limit is None else max(0, min(k, limit - seq.shape[1] + 1))

    @torch.inference_mode()
    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """Up to k tokens after seq (1, L): first feed the accepted tokens' true features, then its own predictions."""
        k = self._room(seq, k)
        root = self._root(seq) if k > 0 else None
        if root is None:
            return Proposal(seq.new_empty(0))
        features, sub = root
        tokens, probs = [], []
        for i in range(k):
            token, q = sampler.choose(self.model.full_logits(sub))
            tokens.append(token.view(1))
            probs.append(q)
            if i + 1 < k:  # the next draft reads this one's predicted feature
                predicted, out = self.model.features_forward(features, token.view(1, 1), self.kv.cache)
                self.calls += 1
                features, sub = predicted[:, -1:], out[0, -1]
        drafted = torch.cat(tokens).to(seq.device)
        return Proposal(drafted, None if sampler.greedy else torch.stack(probs).to(seq.device))

    @torch.inference_mode()
    def propose_tree(self, seq: torch.Tensor, tree: TokenTree | DynamicTree) -> Proposal:
        """Fill a fixed tree, or grow one where the head is confident (chapter 09), in feature space.

        A node's input is its parent's predicted feature and its own token; each depth feeds its new
        nodes with a tree mask over the head's cache (committed entries and the nodes above). The
        grown candidates stay in `last_tree`, for plots.
        """
        tree = tree.truncated(self._room(seq, tree.depth))
        root = self._root(seq) if tree is not None else None
        if root is None:
            return Proposal(seq.new_empty(0))
        root_feature, sub = root
        committed = seq.shape[1] - 1  # head entries of the committed text: entry j holds (feature j, token j + 1)
        outputs: list[torch.Tensor] = []  # the feature predicted at each fed node, in feeding order

        def expand(tokens: torch.Tensor, fed: TokenTree, new: int) -> torch.Tensor:
            first = fed.size - new
            inputs = torch.cat([root_feature[0] if fed.parents[i] < 0 else outputs[fed.parents[i]][None]
                                for i in range(first, fed.size)])
            positions, mask = tree_attention_inputs(self.model, self.kv.cache, committed, fed, self.kv.length)
            predicted, out = self.model.features_forward(inputs[None], tokens[first:].view(1, -1).to(self.model.device),
                                                         self.kv.cache, attention_mask=mask, position_ids=positions)
            self.calls += 1
            outputs.extend(predicted[0])
            return self.model.full_logits(out[0])

        nodes, shape, self.last_tree = grow(tree, self.model.full_logits(sub), expand)
        self.kv.rollback(self.trusted)  # the nodes were guesses
        return Proposal(nodes.to(seq.device), tree=shape) if shape is not None else Proposal(seq.new_empty(0))

    def update(self, seq: torch.Tensor, record: StepRecord, verified: Verified) -> None:
        """Keep the target's features of every position now in seq but the newest; drop cache entries built on guesses."""
        if verified.hidden is None:
            raise ValueError("EagleDrafter needs the target's hidden states; the loop passes them when needs_hidden_states is True")
        hidden = self.model.fuse(verified.hidden.to(self.features.device)).to(self.features.dtype)
        if record.tree is not None and not record.tree.is_chain:  # a tree's accepted nodes are scattered among the others'
            tail = hidden.shape[0] - record.tree.size
            path = torch.tensor(record.path, dtype=torch.long, device=hidden.device)
            hidden = torch.cat([hidden[:tail], hidden[tail + path]])
        # Features of rejected drafts are cut off; the newest token has no feature until it is fed.
        self.features = torch.cat([self.features[: verified.first_position], hidden])[: seq.shape[1] - 1]
        self.kv.rollback(min(self.trusted, self.kv.length))

    # Chapter 11: the same drafting for every row of a batch. Head entry j holds (feature j, token j + 1),
    # so a row of length L needs entries 0 .. L - 2; features and entries are right-aligned like the rows.

    def start_batch(self, target: PreTrainedModel, rows: Rows, *, cache: CacheSpec = CacheSpec()) -> None:
        """Check the head fits the target; no features yet and an empty batch cache for the head."""
        self.start(target, rows.tokens[:1], cache=cache)
        self.batch_kv = BatchKV(batch_cache(self.model, CacheSpec()))
        self.batch_features: torch.Tensor | None = None  # (B, F, d): row b's last feature_counts[b] columns
        self.feature_counts = [0] * rows.size
        self.trusted_rows = [0] * rows.size

    @torch.inference_mode()
    def propose_batch(self, rows: Rows, k: int, sampler: Sampler) -> BatchProposal:
        """Up to k drafts per row: feed every row's accepted tokens with their true features, then the head's own guesses."""
        limit = max_positions(self.model)
        if limit is not None:
            k = max(0, min(k, limit - max(rows.lengths) + 1))
        if k == 0 or self.batch_features is None or min(rows.lengths) < 2:
            return BatchProposal.empty(rows)
        kv, device = self.batch_kv, self.model.device
        behind = kv.align([n - 1 for n in rows.lengths])  # head entries each row still needs, the same for all now
        features = self.batch_features[:, self.batch_features.shape[1] - behind:]
        tokens_in = rows.last(behind).to(device)
        real = [min(behind, n - 1) for n in rows.lengths]
        self.trusted_rows = [n - 1 for n in rows.lengths]
        tokens, probs = [], []
        for _ in range(k):
            mask, positions = kv.inputs(tokens_in.shape[1], real, device)
            predicted, sub = self.model.features_forward(features, tokens_in, kv.cache, attention_mask=mask,
                                                         position_ids=positions)
            kv.fed(tokens_in.shape[1], real)
            self.calls += 1
            token, q = sampler.choose(self.model.full_logits(sub[:, -1]))
            tokens.append(token)
            probs.append(q)
            features, tokens_in, real = predicted[:, -1:], token.view(-1, 1), [1] * rows.size
        drafted = torch.stack(tokens, dim=1).to(rows.tokens.device)
        return BatchProposal(drafted, [k] * rows.size, None if sampler.greedy else torch.stack(probs, dim=1))

    def update_batch(self, rows: Rows, records: Sequence[StepRecord], verified: BatchVerified) -> None:
        """Keep each row's true features up to its newest token; drop head entries built on guesses."""
        if verified.hidden is None:
            raise ValueError("EagleDrafter needs the target's hidden states; the loop passes them when needs_hidden_states is True")
        hidden = self.model.fuse(verified.hidden.to(self.model.device)).to(self.model.dtype)
        fed, m = hidden.shape[1], verified.logits.shape[1] - 1
        # Row b's last fed column is position lengths_before[b] - 1 + m; it needs features up to position L_b - 2.
        first = [f - (before + m) + fed for f, before in zip(self.feature_counts, verified.lengths_before)]
        wanted = [n - 1 for n in rows.lengths]
        if self.batch_features is None or not any(self.feature_counts):  # the prefill: every feature is new
            self.batch_features = realign(hidden, 1, first, wanted)
        else:  # each row's missing features start at the first column fed
            if any(first):
                raise ValueError("the target fed more than each row's newest token and drafts; features would not line up")
            joined = torch.cat([self.batch_features, hidden], dim=1)
            width = self.batch_features.shape[1]
            self.batch_features = realign(joined, 1, [width - f for f in self.feature_counts], wanted)
        self.feature_counts = wanted
        if self.batch_kv.lengths is not None:
            self.batch_kv.keep([min(h, t) for h, t in zip(self.batch_kv.lengths, self.trusted_rows)])

    def select_rows(self, rows: Sequence[int]) -> None:
        """Only these rows go on."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.model.device)
        if self.batch_features is not None:
            counts = [self.feature_counts[b] for b in rows]
            kept = self.batch_features.index_select(0, index)
            width = kept.shape[1]
            self.batch_features = realign(kept, 1, [width - f for f in counts], counts)
            self.feature_counts = counts
        self.trusted_rows = [self.trusted_rows[b] for b in rows]
        if self.batch_kv.lengths is not None:
            self.batch_kv.select(rows)
