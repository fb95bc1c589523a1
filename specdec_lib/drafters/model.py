"""The classic draft: a smaller causal LM with its own KV cache, one forward pass per proposed token."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..loop.kv_cache import ModelRunner, max_positions
from ..loop.sampling import Sampler
from .base import Proposal, Verified


def check_same_vocab(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    target_tokenizer: PreTrainedTokenizerBase | None = None,
    draft_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Raise a ValueError naming both sizes when the two models don't share a vocabulary."""
    t, d = target.config.vocab_size, draft.config.vocab_size
    if t != d:
        raise ValueError(f"target and draft vocabularies differ: target has {t} tokens, draft has {d}")
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise ValueError(
                f"target and draft tokenizers differ (target: {len(target_tokenizer)} tokens, "
                f"draft: {len(draft_tokenizer)} tokens); speculative decoding needs one shared tokenizer"
            )


class ModelDrafter:
    """Drafts with a small model: k cached forward passes per step, rolled back to the accepted tokens after it."""

    needs_hidden_states = False

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.runner: ModelRunner | None = None

    @property
    def calls(self) -> int:
        """Forward passes of the draft model in the current run."""
        return self.runner.calls if self.runner else 0

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, use_cache: bool = True) -> None:
        """Check the vocabularies match and start with an empty cache."""
        check_same_vocab(target, self.model)
        self.runner = ModelRunner(self.model, use_cache)

    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """Append the draft's own choice k times (never past its context limit); return them and q when sampling."""
        limit = max_positions(self.model)
        if limit is not None:
            k = max(0, min(k, limit - seq.shape[1] + 1))
        tokens, probs = [], []
        for _ in range(k):
            token, q = sampler.choose(self.runner.logits(seq)[-1])
            token = token.to(seq.device).view(1)
            tokens.append(token)
            probs.append(q)
            seq = torch.cat([seq, token.view(1, 1)], dim=1)
        if not tokens:
            return Proposal(seq.new_empty(0))
        return Proposal(torch.cat(tokens), None if sampler.greedy else torch.stack(probs).to(seq.device))

    def update(self, seq: torch.Tensor, n_accepted: int, verified: Verified) -> None:
        """Keep only cache entries of tokens still in seq; its newest token has not been fed to the draft yet."""
        self.runner.rollback(seq.shape[1] - 1)
