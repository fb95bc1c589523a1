"""Chapter 02: the speculative decoding loop (a short loop over `step.speculative_step`), and the plain baseline it must match."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence

import torch
from transformers import PreTrainedModel

from .drafter import Drafter, TreeDrafter, as_drafter
from .kv_cache import CacheSpec, ModelRunner, max_positions
from .sampling import Sampler
from .batch import BatchDrafter, BatchRunner, Rows, batch_step
from .step import Rule, StepRecord, pick_rule, speculative_step
from .tree import TokenTree, check_branching
from .tree_growth import DynamicTree


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
    """The prompt plus the generated tokens, shape (1, n+m), and the run's statistics.

    For a batch (chapter 11): sequences (B, n + max_new_tokens), each row padded after its EOS;
    `stats` pools every row's steps (its `target_calls` counts each row's share of the batched
    calls, so tokens per call read per row; its `draft_calls` counts batched draft calls), `rows`
    holds each row's own, and `batch_calls` counts the batched target calls.
    """

    sequences: torch.Tensor
    stats: SpecStats
    rows: list[SpecStats] | None = None
    batch_calls: int | None = None


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
    ids = _prepare_ids(model, input_ids, max_new_tokens)
    if ids.shape[0] != 1:
        raise ValueError(f"input_ids has a batch of {ids.shape[0]} rows; pass its attention_mask to decode a batch")
    return ids


def _prepare_batch(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int, pad: int,
) -> Rows | None:
    """A left-padded batch and its mask as `Rows` on the model's device; None for one unpadded row (today's loop)."""
    ids = _prepare_ids(model, input_ids, max_new_tokens)
    if attention_mask is None:
        return None if ids.shape[0] == 1 else Rows.from_padded(ids, torch.ones_like(ids), pad)
    mask = torch.as_tensor(attention_mask)
    mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; it must match input_ids, {tuple(ids.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold 1 (a real token) and 0 (padding) only")
    mask = mask.to(ids.device).long()
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError(f"rows {(mask.sum(dim=1) == 0).nonzero().flatten().tolist()} of attention_mask are all "
                         "padding; every row needs at least one real token")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask has padding after real tokens: pad on the left (tokenizer.padding_side = "
                         "'left'), as transformers does for generation")
    if ids.shape[0] == 1 and bool(mask.all()):
        return None
    return Rows.from_padded(ids, mask, pad)


def _prepare_ids(model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Validate prompt ids (n,) or (B, n) and the length budget; return them (B, n), long, on the model's device."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (n,) or (B, n), got {tuple(ids.shape)}")
    if ids.shape[0] == 0:
        raise ValueError("input_ids holds no rows")
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
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Plain decoding, one model call per token: the baseline speculative decoding must reproduce.

    ``cache_implementation="static"`` and ``compile=True`` give it chapter 10's treatment, so that a
    compiled speculative loop is timed against a compiled baseline. ``sampler`` and ``cache``
    (a `Sampler`, a `CacheSpec`) may replace the sampling and cache keywords, as the benchmark passes them.
    A left-padded batch (B, n) with its ``attention_mask`` decodes every row at once (chapter 11):
    the result is (B, n + max_new_tokens), each row padded with ``pad_token_id`` after its EOS.
    """
    sampler, spec = run_settings(sampler, cache, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                 use_cache=use_cache, cache_implementation=cache_implementation, compile=compile)
    eos = _eos_set(eos_token_id)
    rows = _prepare_batch(model, input_ids, attention_mask, max_new_tokens, _pad_id(model, pad_token_id, eos))
    if rows is not None:
        spec = dataclasses.replace(spec, max_length=rows.width + max_new_tokens)
        return _autoregressive_batch(model, rows, max_new_tokens, sampler, spec, eos)
    seq = _prepare_prompt(model, input_ids, max_new_tokens)
    spec = dataclasses.replace(spec, max_length=seq.shape[1] + max_new_tokens)
    runner = ModelRunner(model, croppable=False, spec=spec, compiled_lengths=(1,))
    for _ in range(max_new_tokens):
        token, _ = sampler.choose(runner.logits(seq)[-1])
        seq = torch.cat([seq, token.view(1, 1)], dim=1)
        if eos and int(token) in eos:  # the only host sync, and only when an EOS can stop us
            break
    return seq


def _pad_id(model: PreTrainedModel, pad_token_id: int | None, eos: set[int]) -> int:
    """The id written after a finished row's EOS: as given, else the model's pad token, else its EOS, else 0."""
    if pad_token_id is not None:
        return int(pad_token_id)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return min(eos) if eos else 0


def _finish_batch(prompt: Rows, outputs: list[list[int]], max_new_tokens: int) -> torch.Tensor:
    """(B, n + max_new_tokens): the prompts as given, then each row's tokens, then padding."""
    tail = torch.full((prompt.size, max_new_tokens), prompt.pad, dtype=torch.long)
    for b, tokens in enumerate(outputs):
        tail[b, : len(tokens)] = torch.as_tensor(tokens[:max_new_tokens], dtype=torch.long)
    return torch.cat([prompt.tokens, tail.to(prompt.tokens.device)], dim=1)


def _leave(finished: list[int], alive: list[int], *selects: Callable[[list[int]], None]) -> list[int]:
    """Drop the finished rows (positions in `alive`) from every batch that holds them (compaction); the positions left."""
    stay = [j for j in range(len(alive)) if j not in finished]
    if stay:  # with none left the run is over
        for select in selects:
            select(stay)
    return stay


@torch.inference_mode()
def _autoregressive_batch(
    model: PreTrainedModel, rows: Rows, max_new_tokens: int, sampler: Sampler, spec: CacheSpec, eos: set[int],
) -> torch.Tensor:
    """Plain decoding of a left-padded batch: one call per token for every row still going; finished rows leave."""
    prompt, runner = rows, BatchRunner(model, spec)
    outputs: list[list[int]] = [[] for _ in range(rows.size)]
    alive = list(range(rows.size))
    for step in range(max_new_tokens):
        token, _ = sampler.choose(runner.forward(rows)[0][:, -1])
        rows = rows.append(token.view(-1, 1))
        for b, t in zip(alive, token.tolist()):
            outputs[b].append(t)
        finished = [j for j, b in enumerate(alive) if outputs[b][-1] in eos]
        if finished and step + 1 < max_new_tokens:
            stay = _leave(finished, alive, runner.select)
            alive, rows = [alive[j] for j in stay], rows.select(stay)
            if not alive:
                break
    return _finish_batch(prompt, outputs, max_new_tokens)


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


def tree_plan(tree: Sequence[int] | str | DynamicTree) -> TokenTree | DynamicTree:
    """What `tree=` asks for: branching factors per depth (a fixed shape), or "dynamic" / a `DynamicTree` (EAGLE-2)."""
    if isinstance(tree, DynamicTree):
        return tree
    if isinstance(tree, str):
        if tree != "dynamic":
            raise ValueError(f"tree must be branching factors such as (2, 2, 1, 1), 'dynamic' or a DynamicTree, got {tree!r}")
        return DynamicTree()
    return TokenTree.from_branching(check_branching(tree))


def _check_draft_args(
    drafter: Drafter, k: int, tree: Sequence[int] | str | DynamicTree | None, rule: Rule, compile: bool
) -> TokenTree | DynamicTree | None:
    """Validate k and the tree against the drafter and the cache; return the tree's shape or plan (None: chains)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft tokens per step) must be an integer >= 1, got {k!r}")
    if tree is None:
        return None
    shape = tree_plan(tree)
    if rule.name not in ("greedy", "rejection"):
        raise NotImplementedError(f"token trees verify with the greedy or the rejection rule, not {rule.name!r}")
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
    tree: Sequence[int] | str | DynamicTree | None = None,
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
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> SpecOutput:
    """Speculative decoding: the draft proposes up to k tokens, the target checks them all in one call.

    `draft` is a causal LM sharing the target's vocabulary, or any `specdec_lib.drafters.Drafter`.
    The output is exactly the target's greedy output at temperature 0, and distributed exactly as
    the target's samples otherwise. ``verifier="rejection"`` forces the sampling rule even at
    temperature 0 (it then reduces to greedy); ``"greedy"`` requires temperature 0.
    ``tree=(2, 2, 1, 1)`` drafts a token tree with these branching factors per depth instead of a
    chain, and ``tree="dynamic"`` (or a `DynamicTree`) lets the drafter grow one where it is
    confident (chapter 09; `k` is then ignored), on either cache, greedy or sampling.
    ``cache_implementation="static"`` preallocates both models' caches and rolls back by moving the
    write position; ``compile=True`` then compiles the fixed-size calls (chapter 10; chains only).
    ``sampler`` and ``cache`` (a `Sampler`, a `CacheSpec`) may replace the sampling and cache keywords.
    A left-padded batch (B, n) with its ``attention_mask`` (1 = real token) decodes every row at once,
    each accepting its own number of drafts (chapter 11); see `SpecOutput` for what comes back.
    """
    sampler, spec = run_settings(sampler, cache, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                 use_cache=use_cache, cache_implementation=cache_implementation, compile=compile)
    rule, drafter = pick_rule(verifier, sampler), as_drafter(draft)
    eos = _eos_set(eos_token_id)
    rows = _prepare_batch(target, input_ids, attention_mask, max_new_tokens, _pad_id(target, pad_token_id, eos))
    if rows is not None:
        if tree is not None:
            raise ValueError("token trees decode one row at a time: pass one unpadded row, or drop tree= for a batch")
        _check_draft_args(drafter, k, None, rule, spec.compile)
        if not isinstance(drafter, BatchDrafter):
            raise ValueError(f"{type(drafter).__name__} can't draft for a batch (it has no propose_batch); "
                             "decode its rows one at a time")
        spec = dataclasses.replace(spec, max_length=rows.width + max_new_tokens + k + 1)
        return _speculative_batch(target, drafter, rows, max_new_tokens, k, rule, sampler, spec, eos)
    shape = _check_draft_args(drafter, k, tree, rule, spec.compile)
    seq = _prepare_prompt(target, input_ids, max_new_tokens)
    # The most positions one step adds after the text, to the target's cache or the draft's.
    drafts = k if shape is None else shape.size if isinstance(shape, TokenTree) else shape.positions
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


@torch.inference_mode()
def _speculative_batch(
    target: PreTrainedModel, drafter: BatchDrafter, rows: Rows, max_new_tokens: int, k: int, rule: Rule,
    sampler: Sampler, spec: CacheSpec, eos: set[int],
) -> SpecOutput:
    """Speculative decoding of a left-padded batch: `batch_step` until every row has its tokens or its EOS."""
    prompt, runner = rows, BatchRunner(target, spec)
    drafter.start_batch(target, rows, cache=spec)
    outputs: list[list[int]] = [[] for _ in range(rows.size)]
    row_stats = [SpecStats(k=k) for _ in range(rows.size)]
    alive = list(range(rows.size)) if max_new_tokens > 0 else []
    while alive:
        # A row may accept at most remaining-1 drafts, so that its target token never overshoots.
        room = [max_new_tokens - len(outputs[b]) - 1 for b in alive]
        records, rows = batch_step(runner, drafter, rows, rule, sampler, k=min(k, max(room)), room=room)
        finished = []
        for j, (b, record) in enumerate(zip(alive, records)):
            kept, hit_eos = _cut_at_eos(record.new_tokens, eos)
            outputs[b] += kept
            row_stats[b].add(record, len(kept))
            row_stats[b].target_calls += 1
            if hit_eos or len(outputs[b]) >= max_new_tokens:
                finished.append(j)
        if finished:
            stay = _leave(finished, alive, runner.select, drafter.select_rows)
            alive, rows = [alive[j] for j in stay], rows.select(stay)
    pooled = SpecStats(k=k, target_calls=sum(s.target_calls for s in row_stats), draft_calls=drafter.calls,
                       proposed=[p for s in row_stats for p in s.proposed], accepted=[a for s in row_stats for a in s.accepted],
                       steps=[r for s in row_stats for r in s.steps], new_tokens=sum(s.new_tokens for s in row_stats))
    return SpecOutput(_finish_batch(prompt, outputs, max_new_tokens), pooled, row_stats, runner.calls)
