"""Chapter 02: the speculative decoding loop (a short loop over `step.speculative_step`), and the plain baseline it must match."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import torch
from transformers import PreTrainedModel

from .drafter import Drafter, TreeDrafter, as_drafter
from .kv_cache import CacheSpec, ModelRunner, max_positions
from .sampling import Sampler
from .step import Rule, StepRecord, pick_rule, speculative_step
from .tree import TokenTree, check_branching


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

    def add(self, record: StepRecord, kept: int) -> None:
        """Count one step, of whose new tokens `kept` stay (fewer after an EOS)."""
        self.steps.append(record)
        self.proposed.append(record.depth)
        self.accepted.append(record.n_accepted)
        self.new_tokens += kept

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
    sampler: Sampler | None = None,
    cache: CacheSpec | None = None,
) -> torch.Tensor:
    """Plain decoding, one model call per token: the baseline speculative decoding must reproduce.

    ``cache_implementation="static"`` and ``compile=True`` give it chapter 10's treatment, so that a
    compiled speculative loop is timed against a compiled baseline. ``sampler`` and ``cache``
    (a `Sampler`, a `CacheSpec`) may replace the sampling and cache keywords, as the benchmark passes them.
    """
    sampler, spec = run_settings(sampler, cache, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                 use_cache=use_cache, cache_implementation=cache_implementation, compile=compile)
    seq = _prepare_prompt(model, input_ids, max_new_tokens)
    eos = _eos_set(eos_token_id)
    spec = dataclasses.replace(spec, max_length=seq.shape[1] + max_new_tokens)
    runner = ModelRunner(model, croppable=False, spec=spec, compiled_lengths=(1,))
    for _ in range(max_new_tokens):
        token, _ = sampler.choose(runner.logits(seq)[-1])
        seq = torch.cat([seq, token.view(1, 1)], dim=1)
        if eos and int(token) in eos:  # the only host sync, and only when an EOS can stop us
            break
    return seq


SAMPLING_DEFAULTS = dict(temperature=0.0, top_k=None, top_p=None, generator=None)
CACHE_DEFAULTS = dict(use_cache=True, cache_implementation="dynamic", compile=False)


def run_settings(sampler: Sampler | None, cache: CacheSpec | None, **keywords) -> tuple[Sampler, CacheSpec]:
    """A run's Sampler and CacheSpec: the objects given, else built from the loose keywords (never both at once)."""
    for given, defaults, what in ((sampler, SAMPLING_DEFAULTS, "sampler"), (cache, CACHE_DEFAULTS, "cache")):
        changed = [name for name, default in defaults.items() if keywords[name] != default]
        if given is not None and changed:
            raise ValueError(f"give either {what}= or {', '.join(changed)}, not both")
    if sampler is None:
        sampler = Sampler(*(keywords[name] for name in SAMPLING_DEFAULTS))
    if cache is None:
        cache = CacheSpec(*(keywords[name] for name in CACHE_DEFAULTS))
    return sampler, cache


def _check_draft_args(
    drafter: Drafter, k: int, tree: Sequence[int] | None, rule: Rule, compile: bool
) -> TokenTree | None:
    """Validate k and the tree against the drafter, the rule and the cache; return the tree's shape (None: chains)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft tokens per step) must be an integer >= 1, got {k!r}")
    if tree is None:
        return None
    shape = TokenTree.from_branching(check_branching(tree))
    if rule.name != "greedy":
        raise NotImplementedError("token trees verify greedily only: use temperature=0 (and verifier 'auto' or 'greedy')")
    if not isinstance(drafter, TreeDrafter):
        raise ValueError(f"{type(drafter).__name__} can't draft token trees (it has no propose_tree); use a draft model")
    if compile:
        raise NotImplementedError("token trees run eagerly: their 4D masks change shape every step; use compile=False")
    return shape


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
    verifier: Literal["auto", "greedy", "rejection"] | Rule = "auto",
    cache_implementation: Literal["dynamic", "static"] = "dynamic",
    compile: bool = False,
    sampler: Sampler | None = None,
    cache: CacheSpec | None = None,
) -> SpecOutput:
    """Speculative decoding: the draft proposes up to k tokens, the target checks them all in one call.

    `draft` is a causal LM sharing the target's vocabulary, or any `specdec_lib.drafters.Drafter`.
    The output is exactly the target's greedy output at temperature 0, and distributed exactly as
    the target's samples otherwise. ``verifier="rejection"`` forces the sampling rule even at
    temperature 0 (it then reduces to greedy); ``"greedy"`` requires temperature 0.
    ``tree=(2, 2, 1, 1)`` drafts a token tree with these branching factors per depth instead of a
    chain (chapter 09; greedy only, and `k` is then ignored), on either cache.
    ``cache_implementation="static"`` preallocates both models' caches and rolls back by moving the
    write position; ``compile=True`` then compiles the fixed-size calls (chapter 10; chains only).
    ``sampler`` and ``cache`` (a `Sampler`, a `CacheSpec`) may replace the sampling and cache keywords.
    """
    sampler, spec = run_settings(sampler, cache, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                 use_cache=use_cache, cache_implementation=cache_implementation, compile=compile)
    rule, drafter = pick_rule(verifier, sampler), as_drafter(draft)
    shape = _check_draft_args(drafter, k, tree, rule, spec.compile)
    seq = _prepare_prompt(target, input_ids, max_new_tokens)
    eos = _eos_set(eos_token_id)
    drafts = k if shape is None else shape.size  # the most positions one verification adds after the text
    spec = dataclasses.replace(spec, max_length=seq.shape[1] + max_new_tokens + drafts + 1)
    runner = ModelRunner(target, spec=spec, compiled_lengths=(k + 1,))  # a full step: the last token + k drafts
    drafter.start(target, seq, cache=spec)
    stats = SpecStats(k=k if shape is None else shape.depth)
    while stats.new_tokens < max_new_tokens:
        # Draft at most remaining-1 tokens deep so the target's extra token never overshoots.
        room = max_new_tokens - stats.new_tokens - 1
        depth_left = None if shape is None else shape.truncated(room)
        record, seq = speculative_step(runner, drafter, seq, rule, sampler, k=min(k, room), tree=depth_left)
        kept, hit_eos = _cut_at_eos(record.new_tokens, eos)
        stats.add(record, len(kept))
        if hit_eos:  # drop what the step appended after the EOS
            seq = seq[:, : seq.shape[1] - len(record.new_tokens) + len(kept)]
            break
    stats.target_calls, stats.draft_calls = runner.calls, drafter.calls
    return SpecOutput(sequences=seq, stats=stats)
