"""Chapter 04: time target-only decoding, our speculative loop (uncached and cached) and HF assisted generation."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import trange
from transformers import GenerationConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from .generate import SpecStats, autoregressive_generate, speculative_generate
from .theory import _sync, estimate_alpha, expected_speedup, measure_cost_ratio

METHODS = ("target only (cached)", "speculative, uncached", "speculative, cached", "HF assisted generation")


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

    def ratio(self, name: str, baseline: str = METHODS[0]) -> float:
        """Tokens/s of method `name` over tokens/s of `baseline`."""
        return self.methods[name].tokens_per_s / self.methods[baseline].tokens_per_s

    @property
    def predicted_speedup(self) -> float:
        """Leviathan et al.'s formula with the measured alpha and c."""
        return expected_speedup(self.alpha, self.k, self.c)

    @property
    def outputs_agree(self) -> bool:
        """Whether every method produced the same tokens for every prompt."""
        ref = self.methods[METHODS[0]].outputs
        return all(
            len(m.outputs) == len(ref) and all(torch.equal(a, b) for a, b in zip(m.outputs, ref))
            for m in self.methods.values()
        )

    def table(self) -> str:
        """A plain-text table of the results, one row per method."""
        lines = [f"{'method':<26}{'tokens/s':>10}{'vs target':>11}{'target calls':>14}{'acceptance':>12}"]
        for name, m in self.methods.items():
            calls = "" if m.target_calls is None else str(m.target_calls)
            acc = "" if m.acceptance is None else f"{m.acceptance:.3f}"
            lines.append(f"{name:<26}{m.tokens_per_s:>10.1f}{self.ratio(name):>10.2f}x{calls:>14}{acc:>12}")
        return "\n".join(lines)

    def summary(self) -> str:
        """The ratios the tutorial reports, one per line."""
        spec, uncached = METHODS[2], METHODS[1]
        measured = self.ratio(spec)
        lines = [
            f"cached / uncached speculative loop: {self.ratio(spec, uncached):.2f}x",
            f"speculative (cached) vs target only: {measured:.2f}x",
        ]
        if METHODS[3] in self.methods:
            lines.append(f"ours / HF assisted generation:     {self.ratio(spec, METHODS[3]):.2f}x")
        lines.append(
            f"alpha {self.alpha:.3f}, c {self.c:.3f}, k {self.k}: predicted {self.predicted_speedup:.2f}x, "
            f"measured/predicted {measured / self.predicted_speedup:.2f}"
        )
        return "\n".join(lines)


def hf_assisted_generate(
    target: PreTrainedModel, draft: PreTrainedModel, input_ids: torch.Tensor, *, max_new_tokens: int, k: int
) -> torch.Tensor:
    """transformers' assisted generation, greedy, with a constant k and no confidence threshold (like ours)."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    # transformers reads the drafting schedule from the *assistant's* generation config.
    saved = copy.deepcopy(draft.generation_config)
    draft.generation_config.num_assistant_tokens = k
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its internal draft generate() warns about its own arguments
    try:
        ids = input_ids.to(target.device)
        return target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, generation_config=config)
    finally:
        draft.generation_config = saved
        hf_logging.set_verbosity(verbosity)


def _timed(run: Callable, prompts: Sequence[torch.Tensor], device: torch.device) -> tuple[float, list, list]:
    """One pass of `run` over all prompts: (seconds, outputs, stats), synchronized on CUDA."""
    _sync(device)
    start = time.perf_counter()
    outputs, stats = zip(*(run(p) for p in prompts))
    _sync(device)
    return time.perf_counter() - start, list(outputs), list(stats)


def benchmark(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    prompts: Sequence[torch.Tensor],
    *,
    k: int = 4,
    max_new_tokens: int = 64,
    repeats: int = 3,
    include_hf: bool = True,
    include_uncached: bool = True,
) -> BenchResult:
    """Time the decoding methods greedily on the same pair, prompts and k, in this one process."""
    device = target.device
    prompts = [p.to(device).view(1, -1) for p in prompts]
    runs: dict[str, Callable] = {
        METHODS[0]: lambda p: (autoregressive_generate(target, p, max_new_tokens=max_new_tokens), None),
    }
    for name, use_cache in ((METHODS[1], False), (METHODS[2], True)):
        if use_cache or include_uncached:
            runs[name] = lambda p, use_cache=use_cache: _spec(target, draft, p, max_new_tokens, k, use_cache)
    if include_hf:
        runs[METHODS[3]] = lambda p: (hf_assisted_generate(target, draft, p, max_new_tokens=max_new_tokens, k=k), None)
    for run in runs.values():  # warm-up: first calls allocate caches and pick kernels
        run(prompts[0])
    passes: dict[str, list] = {name: [] for name in runs}
    # Round-robin over methods in every repeat, so a slow spell of a noisy machine hits all of them.
    for _ in trange(repeats, desc="benchmark repeats", leave=False):
        for name, run in runs.items():
            passes[name].append(_timed(run, prompts, device))
    methods = {}
    for name, timed in passes.items():
        seconds, (_, outputs, stats) = [t[0] for t in timed], timed[-1]
        new_tokens = sum(o.shape[1] - p.shape[1] for o, p in zip(outputs, prompts))
        result = MethodResult(name, seconds, new_tokens, outputs=outputs)
        if stats[0] is not None:
            result.stats = stats
            result.target_calls = sum(s.target_calls for s in stats)
            result.acceptance = sum(sum(s.accepted) for s in stats) / sum(sum(s.proposed) for s in stats)
        elif name == METHODS[0]:
            result.target_calls = new_tokens
        methods[name] = result
    spec = methods[METHODS[2]].stats
    alpha = estimate_alpha([n for st in spec for n in st.proposed], [n for st in spec for n in st.accepted])
    return BenchResult(k, max_new_tokens, methods, alpha=alpha, c=measure_cost_ratio(target, draft, prompts[0]))


def _spec(
    target: PreTrainedModel, draft: PreTrainedModel, prompt: torch.Tensor, max_new_tokens: int, k: int, use_cache: bool
) -> tuple[torch.Tensor, SpecStats]:
    """One greedy speculative run, as (sequences, stats)."""
    out = speculative_generate(target, draft, prompt, max_new_tokens=max_new_tokens, k=k, use_cache=use_cache)
    return out.sequences, out.stats


def tiny_gpt2_pair(noise: float = 0.02) -> tuple[PreTrainedModel, PreTrainedModel]:
    """The benchmark's tiny GPT-2-style pair: 4 layers, 256 wide, 1024 positions, and a noisy copy as draft."""
    from .testing import tiny_pair

    return tiny_pair("gpt2", noise=noise, vocab_size=512, n_layer=4, hidden=256, max_positions=1024)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: time the four decoding methods on one pair and print the table and ratios."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m specdec_lib.bench", description=main.__doc__)
    parser.add_argument("--pair", choices=["tiny-gpt2", "smollm2"], default="smollm2")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=2, help="how many built-in prompts to use")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face assisted generation")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.pair == "tiny-gpt2":
        target, draft = tiny_gpt2_pair()
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, target.config.vocab_size, (1, 8), generator=gen) for _ in range(args.prompts)]
    else:
        from .models import load_pair

        target, draft, tokenizer, name = load_pair("smollm2")
        print(name)
        prompts = [tokenizer(p, return_tensors="pt").input_ids for p in DEFAULT_PROMPTS[: args.prompts]]
    result = benchmark(
        target, draft, prompts, k=args.k, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
        include_hf=not args.no_hf,
    )
    print(f"pair {args.pair}, k={args.k}, {args.max_new_tokens} new tokens x {len(prompts)} prompts, "
          f"median of {args.repeats} repeats, device {target.device}")
    print(result.table())
    print(result.summary())
    print("outputs identical across methods:", result.outputs_agree)


DEFAULT_PROMPTS = (
    "Once upon a time, there was a little",
    "Here is a list of fruits: apples, bananas,",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Question: What is the boiling point of water?\nAnswer:",
)

if __name__ == "__main__":
    main()
