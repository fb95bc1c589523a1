"""Chapter 02: the speculative decoding loop, and the plain autoregressive baseline it must match."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
from transformers import PreTrainedModel

from .greedy import greedy_verify_tensors
from .kv_cache import ModelRunner, max_positions
from .models import check_same_vocab
from .sampling import check_sampling_args, logits_to_probs, rejection_verify_tensors, sample

# A greedy-style verification rule: (draft_tokens (k,), target_logits (k+1, V)) -> (n_accepted, next_token),
# both 0-d device tensors, like greedy_verify_tensors.
VerifyRule = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StepRecord:
    """What happened in one speculative step: drafted tokens, how many passed, the target's token."""

    draft_tokens: list[int]
    n_accepted: int
    next_token: int
    p_draft: list[float] | None = None  # target probability p(x) of each drafted x (sampling only)
    q_draft: list[float] | None = None  # draft probability q(x) of each drafted x (sampling only)

    @property
    def bonus(self) -> bool:
        """True when every draft token passed, so next_token is the free bonus token."""
        return self.n_accepted == len(self.draft_tokens)

    @property
    def new_tokens(self) -> list[int]:
        """The tokens this step appended (before any EOS cut)."""
        return self.draft_tokens[: self.n_accepted] + [self.next_token]


@dataclass
class SpecStats:
    """Counters of a speculative run; see the properties for the derived rates."""

    k: int
    target_calls: int = 0
    draft_calls: int = 0
    proposed: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens the target accepted: sum(accepted) / sum(proposed)."""
        total = sum(self.proposed)
        return sum(self.accepted) / total if total else math.nan

    @property
    def mean_accepted_length(self) -> float:
        """New tokens per target call (1.0 is what plain decoding gets)."""
        return self.new_tokens / self.target_calls if self.target_calls else math.nan

    @property
    def per_position_acceptance(self) -> list[float]:
        """Entry i: fraction of steps accepting draft position i among steps that reached it (nan if none)."""
        rates = []
        for i in range(self.k):
            reached = [a for p, a in zip(self.proposed, self.accepted) if p > i and a >= i]
            rates.append(sum(a > i for a in reached) / len(reached) if reached else math.nan)
        return rates


def pool_steps(stats: Iterable[SpecStats]) -> tuple[list[int], list[int]]:
    """(proposed, accepted) per step, pooled over several runs."""
    runs = list(stats)
    return [p for s in runs for p in s.proposed], [a for s in runs for a in s.accepted]


@dataclass
class SpecOutput:
    """The prompt plus the generated tokens, shape (1, n+m), and the run's statistics."""

    sequences: torch.Tensor
    stats: SpecStats


def _eos_set(eos_token_id: int | Iterable[int] | None) -> set[int]:
    """Normalize an EOS id or list of ids to a set."""
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return set(int(t) for t in eos_token_id)


def _cut_at_eos(tokens: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first EOS; say whether one was found."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], True
    return tokens, False


def _prepare_prompt(model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Validate a prompt and the length budget; return it as a (1, n) long tensor on the model's device."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (n,) or (1, n), got {tuple(ids.shape)}")
    if ids.shape[0] != 1:
        raise ValueError(f"input_ids has a batch of {ids.shape[0]} rows; batch size > 1 isn't supported")
    if ids.shape[1] == 0:
        raise ValueError("input_ids is an empty prompt; give at least one token")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
    vocab = model.config.vocab_size
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"input_ids holds token ids outside the vocabulary [0, {vocab}): min {lo}, max {hi}")
    limit = max_positions(model)
    if limit is not None and ids.shape[1] + max_new_tokens > limit:
        raise ValueError(
            f"prompt length {ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"maximum of {limit} positions"
        )
    return ids.to(device=model.device, dtype=torch.long)


def _choose(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick a token from one row of logits: argmax at temperature 0, else a filtered sample (and its probs)."""
    if temperature == 0:
        return logits.argmax(dim=-1), None
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    return sample(probs, generator), probs


@torch.inference_mode()
def autoregressive_generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    eos_token_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Plain decoding, one model call per token: the baseline speculative decoding must reproduce."""
    check_sampling_args(temperature, top_k, top_p)
    seq = _prepare_prompt(model, input_ids, max_new_tokens)
    eos = _eos_set(eos_token_id)
    runner = ModelRunner(model, use_cache)
    for _ in range(max_new_tokens):
        token, _ = _choose(runner.logits(seq)[-1], temperature, top_k, top_p, generator)
        seq = torch.cat([seq, token.view(1, 1)], dim=1)
        if eos and int(token) in eos:  # the only host sync, and only when an EOS can stop us
            break
    return seq


def _draft(
    runner: ModelRunner,
    seq: torch.Tensor,
    k: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Let the draft propose k tokens after seq; return them (k,) and, when sampling, their distributions (k, V)."""
    tokens, probs = [], []
    for _ in range(k):
        token, q = _choose(runner.logits(seq)[-1], temperature, top_k, top_p, generator)
        tokens.append(token.view(1))
        probs.append(q)
        seq = torch.cat([seq, token.view(1, 1)], dim=1)
    draft_tokens = torch.cat(tokens) if tokens else seq.new_empty(0)
    draft_probs = torch.stack(probs) if temperature > 0 and probs else None
    return draft_tokens, draft_probs


def _verify(
    runner: ModelRunner,
    seq: torch.Tensor,
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    verifier: str | VerifyRule,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """One target call over seq + drafts: (n_accepted, next_token) as device scalars, and (p(x), q(x)) when sampling."""
    k = draft_tokens.shape[0]
    target_logits = runner.logits(torch.cat([seq, draft_tokens.view(1, -1)], dim=1), keep=k + 1)
    if callable(verifier):
        return (*verifier(draft_tokens, target_logits), None)
    if verifier == "greedy":
        return (*greedy_verify_tensors(draft_tokens, target_logits), None)
    target_probs = logits_to_probs(target_logits, temperature, top_k, top_p)
    if draft_probs is None:  # a greedy draft is a sampler whose q is one-hot
        draft_probs = torch.nn.functional.one_hot(draft_tokens, target_logits.shape[-1]).float()
    n, nxt = rejection_verify_tensors(draft_tokens, draft_probs, target_probs, generator)
    rows = torch.arange(k, device=target_probs.device)
    return n, nxt, (target_probs[rows, draft_tokens], draft_probs[rows, draft_tokens])


@torch.inference_mode()
def speculative_generate(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    k: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    eos_token_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    verifier: Literal["auto", "greedy", "rejection"] | VerifyRule = "auto",
) -> SpecOutput:
    """Speculative decoding: the draft proposes k tokens, the target checks them all in one call.

    The output is exactly the target's greedy output at temperature 0, and distributed exactly as
    the target's samples otherwise. ``verifier="rejection"`` forces the sampling rule even at
    temperature 0 (it then reduces to greedy); ``"greedy"`` requires temperature 0. A function with
    greedy_verify_tensors's signature replaces the greedy rule (chapter 05 times random-weight pairs
    with one that imposes an acceptance rate); the output is then whatever that rule makes it.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft tokens per step) must be an integer >= 1, got {k!r}")
    check_sampling_args(temperature, top_k, top_p)
    if not callable(verifier) and verifier not in ("auto", "greedy", "rejection"):
        raise ValueError(f"verifier must be 'auto', 'greedy', 'rejection' or a function, got {verifier!r}")
    if (verifier == "greedy" or callable(verifier)) and temperature > 0:
        rule = "a verifier function" if callable(verifier) else "verifier='greedy'"
        raise ValueError(f"{rule} needs temperature=0; sampling needs the rejection rule")
    check_same_vocab(target, draft)
    if verifier == "auto":
        verifier = "greedy" if temperature == 0 else "rejection"
    seq = _prepare_prompt(target, input_ids, max_new_tokens)
    eos = _eos_set(eos_token_id)
    draft_limit = max_positions(draft)
    target_runner, draft_runner = ModelRunner(target, use_cache), ModelRunner(draft, use_cache)
    stats = SpecStats(k=k)
    done = max_new_tokens == 0
    while not done:
        remaining = max_new_tokens - stats.new_tokens
        # Draft at most remaining-1 tokens so the target's extra token never overshoots,
        # and never feed the draft past its own context limit.
        k_step = min(k, remaining - 1)
        if draft_limit is not None:
            k_step = max(0, min(k_step, draft_limit - seq.shape[1] + 1))
        draft_tokens, draft_probs = _draft(draft_runner, seq, k_step, temperature, top_k, top_p, generator)
        n_t, next_t, p_q = _verify(
            target_runner, seq, draft_tokens, draft_probs, verifier, temperature, top_k, top_p, generator
        )
        # The one host sync per step: the counts and tokens that control flow and stats need.
        n, next_token, *drafted = torch.cat([n_t.view(1), next_t.view(1), draft_tokens]).tolist()
        seq = torch.cat([seq, draft_tokens[:n].view(1, -1), next_t.view(1, 1)], dim=1)
        record = StepRecord(drafted, n, next_token)
        if p_q is not None:
            record.p_draft, record.q_draft = p_q[0].tolist(), p_q[1].tolist()
        new, done = _cut_at_eos(record.new_tokens, eos)
        if done:
            seq = seq[:, : seq.shape[1] - (n + 1 - len(new))]
        stats.steps.append(record)
        stats.proposed.append(k_step)
        stats.accepted.append(n)
        stats.new_tokens += len(new)
        done = done or stats.new_tokens >= max_new_tokens
        # Rollback: keep only cache entries of tokens that are still in seq. The newest token
        # (correction or bonus) has not been fed to either model yet.
        target_runner.rollback(seq.shape[1] - 1)
        draft_runner.rollback(seq.shape[1] - 1)
    stats.target_calls, stats.draft_calls = target_runner.calls, draft_runner.calls
    return SpecOutput(sequences=seq, stats=stats)
