"""Chapter 01: greedy verification of one speculative step."""

from __future__ import annotations

import torch


def greedy_verify_tensors(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`greedy_verify` without leaving the device: (n_accepted, next_token) as 0-d tensors."""
    draft_tokens = torch.as_tensor(draft_tokens).reshape(-1)
    k = draft_tokens.shape[0]
    if target_logits.dim() != 2 or target_logits.shape[0] != k + 1:
        raise ValueError(
            f"target_logits must have shape (k+1, V) = ({k + 1}, V) for k={k} draft tokens, "
            f"got {tuple(target_logits.shape)}"
        )
    choices = target_logits.argmax(dim=-1)
    matches = draft_tokens.to(choices.device) == choices[:k]
    # cumprod stays 1 up to the first mismatch, so its sum is the accepted prefix length.
    n_accepted = matches.long().cumprod(dim=0).sum()
    return n_accepted, choices[n_accepted]


def greedy_verify(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """Accept the longest draft prefix the target agrees with; return (n_accepted, next_token).

    ``target_logits[i]`` is the target's prediction for the slot of ``draft_tokens[i]``;
    row ``k`` predicts the token after all k drafts. ``next_token`` is the target's argmax at
    the first mismatch, or the free *bonus token* at row k when every draft token matched.
    """
    n_accepted, next_token = greedy_verify_tensors(draft_tokens, target_logits)
    n, nxt = torch.stack([n_accepted, next_token]).tolist()
    return n, nxt
