"""Chapter 03: lossless speculative sampling (Leviathan et al. 2023, Chen et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

# A row of probabilities may be off from 1 by float rounding, never by more than this.
PROB_SUM_TOLERANCE = 1e-3


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a ValueError naming the argument when a sampling setting is out of range."""
    if temperature is None or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


@lru_cache(maxsize=64)
def _warpers(temperature: float, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    """The transformers logits warpers for these settings, in the order `generate` applies them."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def logits_to_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Turn logits (..., V) into the distribution we sample from; temperature 0 is a one-hot argmax."""
    check_sampling_args(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    shape = logits.shape
    # The warpers expect (batch, V); input_ids is unused by these three.
    scores = _warpers(float(temperature), top_k, top_p)(None, logits.reshape(-1, shape[-1]))
    return torch.softmax(scores, dim=-1).reshape(shape)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row of probs (..., V); returns shape (...)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


@dataclass(frozen=True)
class Sampler:
    """How a token is picked from logits: the argmax at temperature 0, else a sample after temperature/top-k/top-p."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        check_sampling_args(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        """True at temperature 0, where every choice is an argmax."""
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution this sampler draws from, (..., V); one-hot at temperature 0."""
        return logits_to_probs(logits, self.temperature, self.top_k, self.top_p)

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pick a token from logits (..., V): argmax at temperature 0, else a sample; also its distribution when sampling."""
        if self.greedy:
            return logits.argmax(dim=-1), None
        probs = self.probs(logits)
        return sample(probs, self.generator), probs


def check_probs(probs: torch.Tensor, name: str) -> None:
    """Raise a ValueError when a probability tensor has negative entries or rows not summing to 1."""
    sums = probs.sum(dim=-1)
    if bool((probs < 0).any()) or bool(((sums - 1).abs() > PROB_SUM_TOLERANCE).any()):
        raise ValueError(
            f"{name} must hold probability rows (non-negative, summing to 1); "
            f"row sums range from {sums.min().item():.4f} to {sums.max().item():.4f}"
        )


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Chance that a draft token x ~ q passes min(1, p(x)/q(x)): sum_x min(p, q) = 1 - TV(p, q)."""
    return torch.minimum(p, q).sum(dim=-1)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The normalized residual max(0, p - q); falls back to p where it sums to 0 (p == q numerically)."""
    residual = (p - q).clamp_min(0)
    total = residual.sum(dim=-1, keepdim=True)
    return torch.where(total > 1e-9, residual / total.clamp_min(1e-30), p)


def rejection_verify(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Accept draft token i with probability min(1, p_i(x)/q_i(x)); return (n_accepted, next_token).

    On the first rejection, ``next_token`` is drawn from the normalized residual max(0, p - q);
    when all k drafts pass, it is the bonus token drawn from the target's row k.
    Either way the emitted tokens are distributed exactly as the target's own samples.
    """
    check_probs(draft_probs, "draft_probs")
    check_probs(target_probs, "target_probs")
    n_accepted, next_token = rejection_verify_tensors(draft_tokens, draft_probs, target_probs, generator)
    n, nxt = torch.stack([n_accepted, next_token]).tolist()
    return n, nxt


def rejection_verify_tensors(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rejection_verify` without validation or leaving the device: (n_accepted, next_token) as 0-d tensors."""
    draft_tokens = torch.as_tensor(draft_tokens).reshape(-1).to(target_probs.device)
    k = draft_tokens.shape[0]
    if draft_probs.shape[0] != k or target_probs.shape[0] != k + 1:
        raise ValueError(
            f"expected draft_probs (k, V) and target_probs (k+1, V) for k={k}, "
            f"got {tuple(draft_probs.shape)} and {tuple(target_probs.shape)}"
        )
    if draft_probs.shape[-1] != target_probs.shape[-1]:
        raise ValueError(
            f"draft and target vocabularies differ: {draft_probs.shape[-1]} vs {target_probs.shape[-1]}"
        )
    rows = torch.arange(k, device=target_probs.device)
    p_x = target_probs[rows, draft_tokens]
    q_x = draft_probs[rows, draft_tokens]
    # Always draw k uniforms and one token, whatever happens, so a seeded run is reproducible.
    u = torch.rand(k, generator=generator, device=target_probs.device)
    # u < p/q written without a division: q(x) = 0 (impossible draw) accepts iff p(x) > 0,
    # and p(x) = 0 never accepts.
    accept = u * q_x < p_x
    n_accepted = accept.long().cumprod(dim=0).sum()
    # Row i < k: the residual for a rejection at i. Row k: the target's own bonus distribution.
    fallback = torch.cat([residual_distribution(target_probs[:k], draft_probs), target_probs[k:]])
    return n_accepted, sample(fallback[n_accepted], generator)
