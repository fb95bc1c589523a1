"""Chapters 04-05: time target-only decoding, our speculative loop (uncached and cached) and HF assisted generation."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm, trange
from torch import nn
from transformers import PreTrainedModel

from ..drafters import HF_ASSISTED, HF_PROMPT_LOOKUP, hf_assisted_generate, hf_prompt_lookup_generate
from ..loop.drafter import Counterpart, Drafter, as_drafter
from ..loop.generate import SpecStats, autoregressive_generate, pool_steps, speculative_generate, tree_plan
from ..loop.kv_cache import CacheSpec
from ..loop.sampling import Sampler
from ..loop.tree_growth import DynamicTree
from .seed_pair import ImposedAcceptance
from .theory import estimate_alpha, expected_speedup, expected_tokens_per_step
from .timing import measure_cost_ratio, stopwatch

TARGET_ONLY = "target only (cached)"  # the baseline every ratio is taken against
SPEC_UNCACHED = "speculative, uncached"
SPEC_CACHED = "speculative, cached"  # our loop as the tutorial runs it
METHODS = (TARGET_ONLY, SPEC_UNCACHED, SPEC_CACHED, HF_ASSISTED)  # the fourth is the draft's transformers counterpart
HF_METHODS = (HF_ASSISTED, HF_PROMPT_LOOKUP)  # the names transformers' counterparts are timed under


@dataclass
class MethodResult:
    """Timings of one decoding method over all prompts."""

    name: str
    seconds: list[float]  # one entry per timed repeat, over all prompts
    new_tokens: int  # per repeat
    target_calls: int | None = None
    acceptance: float | None = None
    outputs: list[torch.Tensor] = field(default_factory=list, repr=False)
    stats: list[SpecStats] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second, from the median repeat."""
        return self.new_tokens / statistics.median(self.seconds)


@dataclass
class BenchResult:
    """All methods' results on one pair, prompt set and k, plus the speedup model's inputs."""

    k: int
    max_new_tokens: int
    methods: dict[str, MethodResult]
    alpha: float
    c: float
    tree: tuple[int, ...] | str | DynamicTree | None = None  # the tree the loop drafted: branching factors or a dynamic tree (k is its depth)
    extra_loops: tuple[tuple[str, bool], ...] = ()  # further settings, each a target-only and a speculative method

    def ratio(self, name: str, baseline: str = TARGET_ONLY) -> float:
        """Tokens/s of method `name` over tokens/s of `baseline`."""
        return self.methods[name].tokens_per_s / self.methods[baseline].tokens_per_s

    @property
    def predicted_speedup(self) -> float:
        """Leviathan et al.'s formula with the measured alpha and c (nan for trees: it models a chain)."""
        return math.nan if self.tree is not None else expected_speedup(self.alpha, self.k, self.c)

    @property
    def outputs_agree(self) -> bool:
        """Whether every method produced the same tokens for every prompt."""
        return all(self.matches_target(name) for name in self.methods)

    def matches_target(self, name: str = SPEC_CACHED) -> bool:
        """Whether method `name` produced the target-only run's tokens for every prompt.

        Our loops share the target-only run's model calls and kernels, so for them this is the exactness
        claim itself. transformers' `generate` computes the prompt's last logits inside a pass over all
        prompt rows, another matrix product that rounds differently: at a near-tie its greedy token can
        differ from the target-only run's, without either being wrong.
        """
        ref, outputs = self.methods[TARGET_ONLY].outputs, self.methods[name].outputs
        return len(outputs) == len(ref) and all(torch.equal(a, b) for a, b in zip(outputs, ref))

    def table(self) -> str:
        """A plain-text table of the results, one row per method."""
        width = max(26, *(len(name) + 2 for name in self.methods))
        lines = [f"{'method':<{width}}{'tokens/s':>10}{'vs target':>11}{'target calls':>14}{'acceptance':>12}"]
        for name, m in self.methods.items():
            calls = "" if m.target_calls is None else str(m.target_calls)
            acc = "" if m.acceptance is None else f"{m.acceptance:.3f}"
            lines.append(f"{name:<{width}}{m.tokens_per_s:>10.1f}{self.ratio(name):>10.2f}x{calls:>14}{acc:>12}")
        return "\n".join(lines)

    def summary(self) -> str:
        """The ratios the tutorial reports, one per line."""
        spec, uncached = SPEC_CACHED, SPEC_UNCACHED
        measured = self.ratio(spec)
        lines = [f"{'speculative (cached) vs target only:':<37}{measured:.2f}x"]
        if uncached in self.methods:
            lines.insert(0, f"{'cached / uncached speculative loop:':<37}{self.ratio(spec, uncached):.2f}x")
        hfs = [hf for hf in HF_METHODS if hf in self.methods]
        for hf in hfs:
            lines.append(f"{f'ours / {hf}:':<37}{self.ratio(spec, hf):.2f}x")
        for loop in self.extra_loops:  # chapter 10: each setting against its own target-only run, and HF's
            base_name, spec_name = loop_methods(*loop)
            lines.append(f"{spec_name} vs {base_name}: {self.ratio(spec_name, base_name):.2f}x")
            lines.extend(f"{spec_name} vs {hf}: {self.ratio(spec_name, hf):.2f}x" for hf in hfs)
        if self.tree is not None:
            spec_run = self.methods[spec]
            lines.append(f"{_tree_name(self.tree, self.k)}: "
                         f"{spec_run.new_tokens / spec_run.target_calls:.2f} tokens per target call, c {self.c:.3f}")
            return "\n".join(lines)
        lines.append(
            f"alpha {self.alpha:.3f}, c {self.c:.3f}, k {self.k}: predicted {self.predicted_speedup:.2f}x, "
            f"measured/predicted {measured / self.predicted_speedup:.2f}"
        )
        return "\n".join(lines)


def hf_counterpart(
    draft: PreTrainedModel | Drafter, *, k: int, max_new_tokens: int, eos_token_id: int | None = None
) -> Counterpart | None:
    """transformers' own version of what `draft` does, as (method name, fn(target, ids) -> sequences), or None."""
    return as_drafter(draft).transformers_counterpart(k=k, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)


def draft_model(draft: PreTrainedModel | Drafter) -> nn.Module | None:
    """The model a draft runs, if any: itself, a drafter's model, or None (prompt lookup)."""
    return draft if isinstance(draft, nn.Module) else draft.model


def _timed(run: Callable[[int], tuple], n_prompts: int, device: torch.device) -> tuple[float, list, list]:
    """One pass of `run` over prompts 0..n_prompts-1: (seconds, outputs, stats), synchronized on CUDA."""
    seconds, results = stopwatch(lambda: [run(i) for i in range(n_prompts)], device)
    outputs, stats = zip(*results)
    return seconds, list(outputs), list(stats)


def benchmark(
    target: PreTrainedModel,
    draft: PreTrainedModel | Drafter,
    prompts: Sequence[torch.Tensor],
    *,
    k: int = 4,
    max_new_tokens: int = 64,
    repeats: int = 3,
    include_hf: bool = True,
    include_uncached: bool = True,
    temperature: float = 0.0,
    seed: int = 0,
    impose_alpha: float | None = None,
    tree: Sequence[int] | str | DynamicTree | None = None,
    cache_implementation: str = "dynamic",
    compile: bool = False,
    extra_loops: Sequence[tuple[str, bool]] = (),
    eos_token_id: int | None = None,
    progress: bool = True,
) -> BenchResult:
    """Time the decoding methods on the same pair, prompts and k, in this one process.

    `draft` is a draft model or any Drafter; transformers' counterpart of it (assisted generation, or
    prompt lookup) is the fourth method. Greedy by default; with temperature > 0 every run samples
    from a generator seeded with `seed` (transformers is then left out: its draws differ from ours). With
    `impose_alpha` the speculative loops run against `seed_pair.ImposedAcceptance(target)`, which
    accepts each draft token with that probability: for timing random-weight pairs, greedy only, HF left out.
    With `tree` (branching factors, "dynamic" or a `DynamicTree`, chapter 09) our loops draft token trees;
    transformers has none, so it is left out.
    `cache_implementation` and `compile` (chapter 10) set how the target-only run and our cached
    loop cache and call the models; each (cache_implementation, compile) in `extra_loops` adds a
    target-only and a speculative method so set (`loop_methods`), timed in the same rounds.
    With `eos_token_id` every method stops at that token (a chat model's end of turn) instead of
    always writing max_new_tokens.
    """
    if impose_alpha is not None and temperature > 0:
        raise ValueError("an imposed acceptance rate replaces the greedy check; it needs temperature 0")
    if impose_alpha is not None and tree is not None:
        raise ValueError("an imposed acceptance rate is defined for chains of drafts, not token trees")
    device = target.device
    prompts = [p.to(device).view(1, -1) for p in prompts]
    limits = dict(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)
    if tree is not None:
        tree = _as_tree(tree)
        k = tree_plan(tree).depth

    def sampler() -> Sampler:
        """A fresh sampler per run, its generator seeded alike, so every method and repeat draws the same."""
        return Sampler(temperature, generator=torch.Generator(device=device).manual_seed(seed))

    def spec_target(i: int) -> PreTrainedModel | ImposedAcceptance:
        if impose_alpha is None:
            return target
        # Seeded per prompt: each prompt gets its own accept/reject pattern, the same in every
        # repeat and method, so that repeats do the same work.
        return ImposedAcceptance(target, impose_alpha, torch.Generator(device=device).manual_seed(seed + i))

    def base_run(cache: CacheSpec) -> Callable[[int], tuple]:
        """Target-only decoding of prompt i with this cache: (sequences, None)."""
        return lambda i: (autoregressive_generate(target, prompts[i], sampler=sampler(), cache=cache, **limits), None)

    def spec_run(cache: CacheSpec) -> Callable[[int], tuple]:
        """Our loop on prompt i with this cache: (sequences, stats)."""
        return lambda i: _spec(spec_target(i), draft, prompts[i], k, tree=tree, sampler=sampler(), cache=cache, **limits)

    # Each run decodes prompt i and returns (sequences, stats or None).
    main = CacheSpec(implementation=cache_implementation, compile=compile)
    runs: dict[str, Callable[[int], tuple]] = {TARGET_ONLY: base_run(main)}
    if include_uncached:
        runs[SPEC_UNCACHED] = spec_run(CacheSpec(use_cache=False))
    runs[SPEC_CACHED] = spec_run(main)
    for implementation, compiled in extra_loops:
        base_name, spec_name = loop_methods(implementation, compiled)
        loop = CacheSpec(implementation=implementation, compile=compiled)
        runs[base_name], runs[spec_name] = base_run(loop), spec_run(loop)
    hf = hf_counterpart(draft, k=k, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)
    if include_hf and hf is not None and temperature == 0 and impose_alpha is None and tree is None:
        runs[hf[0]] = lambda i: (hf[1](target, prompts[i]), None)
    for run in runs.values():  # warm-up: first calls allocate caches, pick kernels and compile
        for i in range(len(prompts)) if compile or any(c for _, c in extra_loops) else (0,):
            run(i)  # compiled runs see every prompt once, so that no timed pass meets a new shape
    passes: dict[str, list] = {name: [] for name in runs}
    # Round-robin over methods in every repeat, so a slow spell of a noisy machine hits all of them.
    for _ in trange(repeats, desc="benchmark repeats", leave=False, disable=not progress):
        for name, run in runs.items():
            passes[name].append(_timed(run, len(prompts), device))
    methods = {}
    for name, timed in passes.items():
        seconds, (_, outputs, stats) = [t[0] for t in timed], timed[-1]
        new_tokens = sum(o.shape[1] - p.shape[1] for o, p in zip(outputs, prompts))
        result = MethodResult(name, seconds, new_tokens, outputs=outputs)
        if stats[0] is not None:
            result.stats = stats
            result.target_calls = sum(s.target_calls for s in stats)
            proposed, accepted = pool_steps(stats)
            result.acceptance = sum(accepted) / sum(proposed) if sum(proposed) else math.nan
        elif name.startswith("target only"):
            result.target_calls = new_tokens
        methods[name] = result
    spec = methods[SPEC_CACHED]
    alpha = estimate_alpha(*pool_steps(spec.stats))
    # c at the cache lengths of the real run: from the first prompt's start to its end. A drafter
    # without a model (prompt lookup) costs a lookup, not a forward pass: c = 0.
    model = draft_model(draft)
    c = 0.0 if model is None else measure_cost_ratio(
        target, model, spec.outputs[0], at_lengths=_spread(prompts[0].shape[1], spec.outputs[0].shape[1]),
        loop=(cache_implementation, compile))
    return BenchResult(k, max_new_tokens, methods, alpha=alpha, c=c, tree=tree, extra_loops=tuple(extra_loops))


def loop_label(cache_implementation: str, compile: bool) -> str:
    """How a loop caches and calls its models, in words: 'dynamic cache', 'static cache, compiled'."""
    return f"{cache_implementation} cache" + (", compiled" if compile else "")


def loop_methods(cache_implementation: str, compile: bool) -> tuple[str, str]:
    """The names of the target-only and the speculative method run with these settings."""
    label = loop_label(cache_implementation, compile)
    return f"target only ({label})", f"speculative ({label})"


def _as_tree(tree: Sequence[int] | str | DynamicTree) -> tuple[int, ...] | str | DynamicTree:
    """A `tree=` value kept as given, branching factors as a tuple (so a run's record never shares a caller's list)."""
    return tree if isinstance(tree, (str, DynamicTree)) else tuple(tree)


def _tree_name(tree: tuple[int, ...] | str | DynamicTree, depth: int) -> str:
    """A tree run's name in a summary: its branching factors, or a dynamic tree's settings."""
    shape = tree_plan(tree)
    if isinstance(shape, DynamicTree):
        sized = ", sized by step costs" if shape.costs is not None else ""
        return f"dynamic tree (depth {depth}, top-k {shape.top_k}, budget {shape.budget}{sized})"
    return f"tree {','.join(map(str, tree))} (depth {depth})"


def tree_json(tree: Sequence[int] | str | DynamicTree) -> list[int] | dict:
    """A run's tree for its JSON: branching factors as a list, a dynamic tree's settings as a dict."""
    shape = tree_plan(tree)
    return shape.describe() if isinstance(shape, DynamicTree) else list(tree)


def _spread(start: int, end: int, n: int = 3) -> list[int]:
    """n cache lengths spread evenly from start to end-1."""
    return sorted({start + (end - 1 - start) * i // max(n - 1, 1) for i in range(n)})


def _spec(target: PreTrainedModel | ImposedAcceptance, draft: PreTrainedModel | Drafter, prompt: torch.Tensor, k: int,
          **kwargs) -> tuple[torch.Tensor, SpecStats]:
    """One speculative run, as (sequences, stats)."""
    out = speculative_generate(target, draft, prompt, k=k, **kwargs)
    return out.sequences, out.stats


def sweep_k(
    target: PreTrainedModel,
    draft: PreTrainedModel | Drafter,
    prompts: Sequence[torch.Tensor],
    ks: Sequence[int],
    *,
    max_new_tokens: int = 64,
    repeats: int = 3,
    temperature: float = 0.0,
    impose_alpha: float | None = None,
    include_hf: bool = False,
    trees: Sequence[Sequence[int] | str | DynamicTree] = (),
    cache_implementation: str = "dynamic",
    compile: bool = False,
    eos_token_id: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Benchmark the cached loop against the target alone for each k, then each token tree; one JSON-ready dict per run.

    With `include_hf`, transformers' counterpart of the draft is timed too (keys `hf_method`,
    `hf_tokens_per_s`, `hf_speedup`). A tree's run has `tree` (its branching factors) and `k` its
    depth; the chain formula's predictions are None there. `cache_implementation` and `compile`
    apply to both the loop and the target-only run it is compared with (chapter 10). `eos_token_id`
    stops every method at that token.
    """
    runs = []
    shapes = [(k, None) for k in ks] + [(tree_plan(t).depth, _as_tree(t)) for t in trees]
    for k, tree in tqdm(shapes, desc="k sweep", disable=not progress):
        r = benchmark(target, draft, prompts, k=k, max_new_tokens=max_new_tokens, repeats=repeats,
                      include_hf=include_hf, include_uncached=False, temperature=temperature,
                      impose_alpha=impose_alpha, tree=tree, cache_implementation=cache_implementation,
                      compile=compile, eos_token_id=eos_token_id, progress=progress)
        spec, base = r.methods[SPEC_CACHED], r.methods[TARGET_ONLY]
        hf = next((m for m in HF_METHODS if m in r.methods), None)
        extra = {} if hf is None else {
            "hf_method": hf, "hf_tokens_per_s": r.methods[hf].tokens_per_s, "hf_speedup": r.ratio(hf),
            "hf_outputs_match_target": r.matches_target(hf)}
        runs.append({
            "k": k,
            "tree": None if tree is None else tree_json(tree),
            "tokens_per_s": spec.tokens_per_s,
            "target_only_tokens_per_s": base.tokens_per_s,
            "speedup": r.ratio(SPEC_CACHED),
            "alpha": r.alpha,
            "c": r.c,
            "acceptance_rate": spec.acceptance,
            "target_calls": spec.target_calls,
            "new_tokens": spec.new_tokens,
            "tokens_per_target_call": spec.new_tokens / spec.target_calls,
            "predicted_speedup": None if tree else r.predicted_speedup,
            "predicted_tokens_per_target_call": None if tree else expected_tokens_per_step(r.alpha, k),
            # Only a greedy, checked run must reproduce the target; an imposed alpha makes other tokens by design.
            "outputs_match_target": r.matches_target() if temperature == 0 and impose_alpha is None else None,
            **extra,
        })
    return runs
