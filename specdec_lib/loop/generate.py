"""Chapter 02: the speculative decoding loop, and the plain autoregressive baseline it must match."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import torch
from transformers import PreTrainedModel

from ..drafters import Drafter, Proposal, TreeDrafter, Verified, as_drafter
from .greedy import greedy_verify_tensors
from .kv_cache import CacheSpec, ModelRunner, max_positions
from .sampling import Sampler, rejection_verify_tensors
from .tree import TokenTree, check_branching, greedy_tree_path, keep_path_in_cache, tree_forward


@dataclass
class StepRecord:
    """What happened in one speculative step: drafted tokens, how many passed, the target's token."""

    draft_tokens: list[int]  # a chain's drafts in order; with a tree, every node's token breadth-first
    n_accepted: int
    next_token: int
    p_draft: list[float] | None = None  # target probability p(x) of each drafted x (sampling only)
    q_draft: list[float] | None = None  # draft probability q(x) of each drafted x (sampling only)
    tree: TokenTree | None = None  # the tree drafted in this step (chapter 09), None for a chain
    path: list[int] | None = None  # the tree nodes accepted, root side first

    @property
    def bonus(self) -> bool:
        """True when there were drafts and a whole chain or root-to-leaf path passed, so next_token is a free bonus."""
        deepest = self.tree.depth if self.tree is not None else len(self.draft_tokens)
        return bool(self.draft_tokens) and self.n_accepted == deepest

    @property
    def accepted_tokens(self) -> list[int]:
        """The drafted tokens the target accepted, in order."""
        if self.path is not None:
            return [self.draft_tokens[i] for i in self.path]
        return self.draft_tokens[: self.n_accepted]

    @property
    def new_tokens(self) -> list[int]:
        """The tokens this step appended (before any EOS cut)."""
        return self.accepted_tokens + [self.next_token]


@dataclass
class SpecStats:
    """Counters of a speculative run; see the properties for the derived rates.

    With a token tree, `k` is the tree's depth and `proposed` counts, per step, the depth drafted
    (the most tokens that step could accept), so the rates below read per depth.
    """

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
        return acceptance_per_position(self.proposed, self.accepted, self.k)


def acceptance_per_position(proposed: Sequence[int], accepted: Sequence[int], k: int) -> list[float]:
    """Entry i < k: among steps that drafted position i and accepted everything before it, the share accepting it."""
    rates = []
    for i in range(k):
        reached = [a for p, a in zip(proposed, accepted) if p > i and a >= i]
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
    cache_implementation: Literal["dynamic", "static"] = "dynamic",
    compile: bool = False,
) -> torch.Tensor:
    """Plain decoding, one model call per token: the baseline speculative decoding must reproduce.

    ``cache_implementation="static"`` and ``compile=True`` give it chapter 10's treatment, so that a
    compiled speculative loop is timed against a compiled baseline.
    """
    sampler = Sampler(temperature, top_k, top_p, generator)
    seq = _prepare_prompt(model, input_ids, max_new_tokens)
    eos = _eos_set(eos_token_id)
    spec = CacheSpec(use_cache, cache_implementation, compile, max_length=seq.shape[1] + max_new_tokens)
    runner = ModelRunner(model, croppable=False, spec=spec, compiled_lengths=(1,))
    for _ in range(max_new_tokens):
        token, _ = sampler.choose(runner.logits(seq)[-1])
        seq = torch.cat([seq, token.view(1, 1)], dim=1)
        if eos and int(token) in eos:  # the only host sync, and only when an EOS can stop us
            break
    return seq


def _verify(
    runner: ModelRunner, seq: torch.Tensor, proposal: Proposal, rule: str, sampler: Sampler, hidden: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, Verified]:
    """One target call over seq + drafts: (n_accepted, next_token) as device scalars, (p(x), q(x)) when
    sampling, and what the call computed for the drafter."""
    drafts, k = proposal.tokens, proposal.tokens.shape[0]
    first = runner.cached_length
    logits, states = runner.forward(torch.cat([seq, drafts.view(1, -1)], dim=1), keep=k + 1, hidden=hidden)
    verified = Verified(logits, states, first)
    if rule == "greedy":
        return (*greedy_verify_tensors(drafts, logits), None, verified)
    target_probs = sampler.probs(logits)
    draft_probs = proposal.probs
    if draft_probs is None:  # a deterministic draft is a sampler whose q is one-hot
        draft_probs = torch.nn.functional.one_hot(drafts, logits.shape[-1]).float()
    n, nxt = rejection_verify_tensors(drafts, draft_probs, target_probs, sampler.generator)
    rows = torch.arange(k, device=target_probs.device)
    return n, nxt, (target_probs[rows, drafts], draft_probs[rows, drafts]), verified


def _chain_step(
    runner: ModelRunner, drafter: Drafter, seq: torch.Tensor, k: int, rule: str, sampler: Sampler
) -> tuple[StepRecord, torch.Tensor, Verified]:
    """Draft up to k tokens, verify them in one target call: the step's record, its new tokens (1, n+1), and the call."""
    proposal = drafter.propose(seq, k, sampler)
    n_t, next_t, p_q, verified = _verify(runner, seq, proposal, rule, sampler, drafter.needs_hidden_states)
    # The one host sync per step: the counts and tokens that control flow and stats need.
    n, next_token, *drafted = torch.cat([n_t.view(1), next_t.view(1), proposal.tokens]).tolist()
    record = StepRecord(drafted, n, next_token)
    if p_q is not None:
        record.p_draft, record.q_draft = p_q[0].tolist(), p_q[1].tolist()
    return record, torch.cat([proposal.tokens[:n], next_t.view(1)]).view(1, -1), verified


def _tree_step(
    runner: ModelRunner, drafter: Drafter, seq: torch.Tensor, tree: TokenTree | None
) -> tuple[StepRecord, torch.Tensor, Verified]:
    """Draft a token tree, verify every node in one target call, keep the longest accepted path (chapter 09)."""
    nodes = drafter.propose_tree(seq, tree).tokens if tree is not None else seq.new_empty(0)
    if nodes.numel() == 0:  # no room left to draft: one plain target step
        return _chain_step(runner, drafter, seq, 0, "greedy", Sampler())
    tree = TokenTree(tree.parents[: nodes.numel()])  # the drafter may have cut it shallower
    first = runner.cached_length
    logits, states = tree_forward(runner, seq, nodes, tree, keep=tree.size + 1, hidden=drafter.needs_hidden_states)
    path, next_token = greedy_tree_path(nodes, tree, logits)
    keep_path_in_cache(runner.cache, tree.size, path)
    record = StepRecord(nodes.tolist(), len(path), next_token, tree=tree, path=path)
    verified = Verified(logits, states, first)
    return record, seq.new_tensor([record.new_tokens]), verified


@torch.inference_mode()
def speculative_generate(
    target: PreTrainedModel,
    draft: PreTrainedModel | Drafter,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    k: int = 4,
    tree: Sequence[int] | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    eos_token_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    verifier: Literal["auto", "greedy", "rejection"] = "auto",
    cache_implementation: Literal["dynamic", "static"] = "dynamic",
    compile: bool = False,
) -> SpecOutput:
    """Speculative decoding: the draft proposes up to k tokens, the target checks them all in one call.

    `draft` is a causal LM sharing the target's vocabulary, or any `specdec_lib.drafters.Drafter`.
    The output is exactly the target's greedy output at temperature 0, and distributed exactly as
    the target's samples otherwise. ``verifier="rejection"`` forces the sampling rule even at
    temperature 0 (it then reduces to greedy); ``"greedy"`` requires temperature 0.
    ``tree=(2, 2, 1, 1)`` drafts a token tree with these branching factors per depth instead of a
    chain (chapter 09; greedy only, and `k` is then ignored).
    ``cache_implementation="static"`` preallocates both models' caches and rolls back by moving the
    write position; ``compile=True`` then compiles the fixed-size calls (chapter 10; chains only).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft tokens per step) must be an integer >= 1, got {k!r}")
    sampler = Sampler(temperature, top_k, top_p, generator)
    if verifier not in ("auto", "greedy", "rejection"):
        raise ValueError(f"verifier must be 'auto', 'greedy' or 'rejection', got {verifier!r}")
    if verifier == "greedy" and not sampler.greedy:
        raise ValueError("verifier='greedy' needs temperature=0; sampling needs the rejection rule")
    rule = "rejection" if verifier == "rejection" or not sampler.greedy else "greedy"
    drafter = as_drafter(draft)
    shape = None if tree is None else TokenTree.from_branching(check_branching(tree))
    if shape is not None and rule != "greedy":
        raise NotImplementedError("token trees verify greedily only: use temperature=0 (and verifier 'auto' or 'greedy')")
    if shape is not None and not isinstance(drafter, TreeDrafter):
        raise ValueError(f"{type(drafter).__name__} can't draft token trees (it has no propose_tree); use a draft model")
    if shape is not None and cache_implementation == "static":
        raise NotImplementedError("token trees gather their accepted path in a dynamic cache; use cache_implementation='dynamic'")
    seq = _prepare_prompt(target, input_ids, max_new_tokens)
    eos = _eos_set(eos_token_id)
    spec = CacheSpec(use_cache, cache_implementation, compile, max_length=seq.shape[1] + max_new_tokens + k + 1)
    runner = ModelRunner(target, spec=spec, compiled_lengths=(k + 1,))  # a full step: the last token + k drafts
    drafter.start(target, seq, cache=spec)
    stats = SpecStats(k=k if shape is None else shape.depth)
    done = max_new_tokens == 0
    while not done:
        # Draft at most remaining-1 tokens deep so the target's extra token never overshoots.
        budget = max_new_tokens - stats.new_tokens - 1
        if shape is None:
            record, new_ids, verified = _chain_step(runner, drafter, seq, min(k, budget), rule, sampler)
        else:
            record, new_ids, verified = _tree_step(runner, drafter, seq, shape.truncated(budget))
        seq = torch.cat([seq, new_ids], dim=1)
        new, done = _cut_at_eos(record.new_tokens, eos)
        if done:
            seq = seq[:, : seq.shape[1] - (new_ids.shape[1] - len(new))]
        stats.steps.append(record)
        stats.proposed.append(record.tree.depth if record.tree is not None else len(record.draft_tokens))
        stats.accepted.append(record.n_accepted)
        stats.new_tokens += len(new)
        done = done or stats.new_tokens >= max_new_tokens
        # Rollback: keep only cache entries of tokens that are still in seq. The newest token
        # (correction or bonus) has not been fed to the target yet.
        runner.rollback(seq.shape[1] - 1)
        drafter.update(seq, record.n_accepted, verified)
    stats.target_calls, stats.draft_calls = runner.calls, drafter.calls
    return SpecOutput(sequences=seq, stats=stats)
