"""Chapter 04: time target-only decoding, our speculative loop (uncached and cached) and HF assisted generation."""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm, trange
from transformers import GenerationConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from .generate import SpecStats, autoregressive_generate, pool_steps, speculative_generate
from .models import load_pair, pick_device
from .plots import plot_k_sweep
from .prompts import DEFAULT_PROMPTS
from .seed_pair import SEED_PAIR_NAME, imposed_acceptance, read_alpha, seed_sized_pair
from .testing import tiny_pair
from .theory import sync_device, estimate_alpha, expected_speedup, expected_tokens_per_step, measure_cost_ratio, optimal_k

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


def _timed(run: Callable[[int], tuple], n_prompts: int, device: torch.device) -> tuple[float, list, list]:
    """One pass of `run` over prompts 0..n_prompts-1: (seconds, outputs, stats), synchronized on CUDA."""
    sync_device(device)
    start = time.perf_counter()
    outputs, stats = zip(*(run(i) for i in range(n_prompts)))
    sync_device(device)
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
    temperature: float = 0.0,
    seed: int = 0,
    impose_alpha: float | None = None,
    progress: bool = True,
) -> BenchResult:
    """Time the decoding methods on the same pair, prompts and k, in this one process.

    Greedy by default; with temperature > 0 every run samples from a generator seeded with `seed`
    (HF assisted generation is then left out: its sampling draws differ from ours). With
    `impose_alpha` the speculative loops accept each draft token with that probability instead of
    checking it (see seed_pair): for timing random-weight pairs, greedy only, HF left out.
    """
    if impose_alpha is not None and temperature > 0:
        raise ValueError("an imposed acceptance rate replaces the greedy check; it needs temperature 0")
    device = target.device
    prompts = [p.to(device).view(1, -1) for p in prompts]
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature)

    def seeded() -> dict:
        return dict(sampling, generator=torch.Generator(device=device).manual_seed(seed))

    def spec_args(i: int) -> dict:
        if impose_alpha is None:
            return seeded()
        # Seeded per prompt: each prompt gets its own accept/reject pattern, the same in every
        # repeat and method, so that repeats do the same work.
        rule = imposed_acceptance(impose_alpha, torch.Generator(device=device).manual_seed(seed + i))
        return dict(seeded(), verifier=rule)

    # Each run decodes prompt i and returns (sequences, stats or None).
    runs: dict[str, Callable[[int], tuple]] = {
        METHODS[0]: lambda i: (autoregressive_generate(target, prompts[i], **seeded()), None)}
    for name, use_cache in ((METHODS[1], False), (METHODS[2], True)):
        if use_cache or include_uncached:
            runs[name] = lambda i, use_cache=use_cache: _spec(target, draft, prompts[i], k, use_cache, **spec_args(i))
    if include_hf and temperature == 0 and impose_alpha is None:
        runs[METHODS[3]] = lambda i: (
            hf_assisted_generate(target, draft, prompts[i], max_new_tokens=max_new_tokens, k=k), None)
    for run in runs.values():  # warm-up: first calls allocate caches and pick kernels
        run(0)
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
            result.acceptance = sum(accepted) / sum(proposed)
        elif name == METHODS[0]:
            result.target_calls = new_tokens
        methods[name] = result
    spec = methods[METHODS[2]]
    alpha = estimate_alpha(*pool_steps(spec.stats))
    # c at the cache lengths of the real run: from the first prompt's start to its end.
    c = measure_cost_ratio(target, draft, spec.outputs[0], at_lengths=_spread(prompts[0].shape[1], spec.outputs[0].shape[1]))
    return BenchResult(k, max_new_tokens, methods, alpha=alpha, c=c)


def _spread(start: int, end: int, n: int = 3) -> list[int]:
    """n cache lengths spread evenly from start to end-1."""
    return sorted({start + (end - 1 - start) * i // max(n - 1, 1) for i in range(n)})


def _spec(
    target: PreTrainedModel, draft: PreTrainedModel, prompt: torch.Tensor, k: int, use_cache: bool, **kwargs
) -> tuple[torch.Tensor, SpecStats]:
    """One speculative run, as (sequences, stats)."""
    out = speculative_generate(target, draft, prompt, k=k, use_cache=use_cache, **kwargs)
    return out.sequences, out.stats


def tiny_gpt2_pair(noise: float = 0.02) -> tuple[PreTrainedModel, PreTrainedModel]:
    """The benchmark's tiny GPT-2-style pair: 4 layers, 256 wide, 1024 positions, and a noisy copy as draft."""
    return tiny_pair("gpt2", noise=noise, vocab_size=512, n_layer=4, hidden=256, max_positions=1024)


# The built-in varied prompt set: prose, lists, code, Q&A, instructions.
def load_prompts(path: str | None) -> list[str]:
    """Prompts from a file (a JSON list of strings, or one prompt per line) or the built-in varied set."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    text = Path(path).read_text()
    if path.endswith(".json"):
        prompts = json.loads(text)
    else:
        prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"{path}: expected a non-empty list of prompt strings")
    return prompts


def sweep_k(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    prompts: Sequence[torch.Tensor],
    ks: Sequence[int],
    *,
    max_new_tokens: int = 64,
    repeats: int = 3,
    temperature: float = 0.0,
    impose_alpha: float | None = None,
    progress: bool = True,
) -> list[dict]:
    """Benchmark the cached loop against the target alone for each k; one JSON-ready dict per k."""
    runs = []
    for k in tqdm(ks, desc="k sweep", disable=not progress):
        r = benchmark(target, draft, prompts, k=k, max_new_tokens=max_new_tokens, repeats=repeats,
                      include_hf=False, include_uncached=False, temperature=temperature,
                      impose_alpha=impose_alpha, progress=progress)
        spec, base = r.methods[METHODS[2]], r.methods[METHODS[0]]
        runs.append({
            "k": k,
            "tokens_per_s": spec.tokens_per_s,
            "target_only_tokens_per_s": base.tokens_per_s,
            "speedup": r.ratio(METHODS[2]),
            "alpha": r.alpha,
            "c": r.c,
            "acceptance_rate": spec.acceptance,
            "target_calls": spec.target_calls,
            "new_tokens": spec.new_tokens,
            "tokens_per_target_call": spec.new_tokens / spec.target_calls,
            "predicted_speedup": r.predicted_speedup,
            "predicted_tokens_per_target_call": expected_tokens_per_step(r.alpha, k),
            # Only a greedy, checked run must reproduce the target; an imposed alpha makes other tokens by design.
            "outputs_match_target": r.outputs_agree if temperature == 0 and impose_alpha is None else None,
        })
    return runs


def pooled_alpha_c(runs: Sequence[Mapping]) -> tuple[float, float]:
    """One (alpha, c) for a sweep: alpha weighted by target calls, c averaged."""
    calls = sum(r["target_calls"] for r in runs)
    return sum(r["alpha"] * r["target_calls"] for r in runs) / calls, statistics.fmean(r["c"] for r in runs)


def format_sweep(runs: Sequence[Mapping]) -> str:
    """A readable table of a k sweep."""
    lines = [f"{'k':>3}{'tok/s':>9}{'target':>9}{'speedup':>9}{'predicted':>10}{'meas/pred':>10}"
             f"{'alpha':>7}{'c':>7}{'tok/call':>9}"]
    for r in runs:
        lines.append(
            f"{r['k']:>3}{r['tokens_per_s']:>9.1f}{r['target_only_tokens_per_s']:>9.1f}{r['speedup']:>8.2f}x"
            f"{r['predicted_speedup']:>9.2f}x{r['speedup'] / r['predicted_speedup']:>10.2f}"
            f"{r['alpha']:>7.2f}{r['c']:>7.2f}{r['tokens_per_target_call']:>9.2f}"
        )
    return "\n".join(lines)


def format_report(report: Mapping) -> str:
    """A bench JSON report as text: the pair, where it ran, the K sweep and the pooled numbers."""
    alpha, c = report["alpha"], report["c"]
    best, predicted = report["best_k_measured"], report["best_k_predicted"]
    speedup = next(r["speedup"] for r in report["runs"] if r["k"] == best)
    return "\n".join([
        report["pair"],
        f"on {report['device_name']} ({report['device']}, {report['dtype']}), temperature {report['temperature']}, "
        f"{report['max_new_tokens']} new tokens x {len(report['prompts'])} prompts, median of {report['repeats']} repeats",
        format_sweep(report["runs"]),
        f"pooled alpha {alpha:.3f}, c {c:.3f}; best k measured {best} ({speedup:.2f}x), "
        f"predicted {predicted} ({expected_speedup(alpha, predicted, c):.2f}x)",
    ])


def _parse_ks(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], each >= 1."""
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k values must be integers >= 1, got {text!r}")
    return ks


def _load(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedModel, object, str]:
    """The pair the command line asks for, on the requested device and dtype."""
    dtype = getattr(torch, args.dtype)
    if args.preset == "tiny-gpt2":
        target, draft = tiny_gpt2_pair()
        device = pick_device(args.device)
        return target.to(device, dtype), draft.to(device, dtype), None, "tiny random GPT-2-style pair (4x256) + noisy copy"
    if args.preset == "seed-gpt2":
        return *seed_sized_pair(pick_device(args.device), dtype), None, SEED_PAIR_NAME
    pair = load_pair(None if args.target else args.preset, target=args.target, draft=args.draft,
                     device=args.device, dtype=dtype)
    return pair.target, pair.draft, pair.tokenizer, pair.name


def main(argv: Sequence[str] | None = None) -> dict:
    """Sweep k for a model pair; print a table, and optionally write JSON and a plot."""
    parser = argparse.ArgumentParser(prog="python -m specdec_lib.bench", description=main.__doc__)
    parser.add_argument("--preset", choices=["smollm2", "gpt2", "tiny-gpt2", "seed-gpt2"], default="smollm2",
                        help="seed-gpt2: gpt2-medium / gpt2 sizes with random weights, for timing with --alpha")
    parser.add_argument("--target", help="hub name or path of a target model (with --draft)")
    parser.add_argument("--draft", help="draft model; with --preset smollm2: trained (default) or a stand-in such as int8")
    parser.add_argument("--k", type=_parse_ks, default=[1, 2, 4, 6, 8], help="comma-separated, e.g. 1,2,4,8")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts", help="file of prompts: a JSON list, or one per line (\\n for newlines)")
    parser.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--out", help="write every run as JSON here")
    parser.add_argument("--plot", help="write the speedup plots (PNG) here")
    parser.add_argument("--alpha", help="impose this acceptance rate instead of checking drafts (timing only): "
                        "a number, or a bench JSON of a real pair whose pooled alpha to use; needed by seed-gpt2")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.repeats < 1:
        parser.error("--max-new-tokens and --repeats must be >= 1")
    imposed, alpha_source = None, None
    if args.alpha is not None:
        try:
            imposed, alpha_source = read_alpha(args.alpha)
        except ValueError as err:
            parser.error(str(err))
        if args.temperature > 0:
            parser.error("--alpha replaces the greedy check, so it needs --temperature 0")
    elif args.preset == "seed-gpt2":
        parser.error("--preset seed-gpt2 has random weights, so its draft never agrees: give --alpha, a number "
                     "or a bench JSON of a real pair (e.g. docs/results/cpu_smollm2.json)")
    torch.manual_seed(0)
    target, draft, tokenizer, name = _load(args)
    if imposed is not None:
        name += f"\nacceptance IMPOSED at alpha {imposed:.3f} ({alpha_source}), not checked"
    texts = load_prompts(args.prompts)[: args.num_prompts]
    if tokenizer is None:  # the random pairs have no tokenizer: random prompts of 8 tokens
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, target.config.vocab_size, (1, 8), generator=gen) for _ in texts]
        texts = [f"<random prompt {i}: {p.tolist()[0]}>" for i, p in enumerate(prompts)]
    else:
        prompts = [tokenizer(t, return_tensors="pt").input_ids for t in texts]
    print(f"{name}\ndevice {target.device}, {args.dtype}, temperature {args.temperature}, "
          f"{args.max_new_tokens} new tokens x {len(prompts)} prompts, median of {args.repeats} repeats")
    runs = sweep_k(target, draft, prompts, args.k, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                   temperature=args.temperature, impose_alpha=imposed)
    alpha, c = pooled_alpha_c(runs)
    best = max(runs, key=lambda r: r["speedup"])
    report = {
        "pair": name, "device": str(target.device), "device_name": _device_name(target.device),
        "dtype": args.dtype, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats, "prompts": texts, "alpha_imposed": imposed, "alpha_source": alpha_source,
        "alpha": alpha, "c": c,
        "best_k_measured": best["k"], "best_k_predicted": optimal_k(alpha, c), "runs": runs,
    }
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print("wrote", args.out)
    if args.plot:
        plot_k_sweep(runs, alpha, c, title=f"{name} ({_device_name(target.device)})").savefig(args.plot, dpi=120)
        print("wrote", args.plot)
    return report


def _device_name(device: torch.device) -> str:
    """A human-readable name of the device, e.g. the GPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine() or device.type
    return f"{name}, {os.cpu_count()} cores" if device.type == "cpu" else name


if __name__ == "__main__":
    main()
