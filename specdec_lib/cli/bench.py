"""The benchmark's command line: `python -m specdec_lib.bench` sweeps K; `... bench compare` times four methods.

    python -m specdec_lib.bench --preset smollm2 --k 1,2,4,8 --out r.json --plot r.png
    python -m specdec_lib.bench --preset seed-gpt2 --alpha docs/results/cpu_smollm2.json --k 1,2
    python -m specdec_lib.bench --k 1,2,4 --tree 2,2,1,1 --tree 3,1
    python -m specdec_lib.bench --draft eagle --k 1,2,3,4 --tree 2,2,1,1 --tree dynamic --tree dynamic-costs
    python -m specdec_lib.bench --cache static --compile --k 1,2,4
    python -m specdec_lib.bench compare --pair tiny-gpt2 --max-new-tokens 256
    python -m specdec_lib.bench compare --cache static --compile --out c.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure
from transformers import PreTrainedModel

from ..bench.batch_sweep import crossover, format_batch_sweep, sweep_batch
from ..bench.report import chain_runs, device_name, format_report, pooled_alpha_c
from ..bench.runs import SPEC_CACHED, BenchResult, benchmark, draft_model, loop_label, loop_methods, sweep_k
from ..bench.seed_pair import SEED_PAIR_NAME, read_alpha, seed_sized_pair
from ..bench.theory import optimal_k
from ..bench.timing import measure_step_costs
from ..drafters import PROMPT_LOOKUP, Drafter, ModelDrafter, draft_kind, draft_names
from ..loop.tree_growth import DynamicTree
from ..models import load_pair, pick_device
from ..models.cpu_kernels import fast_on_cpu, kernel_table
from ..prompts import DEFAULT_PROMPTS, GROUNDED_PROMPTS, HELDOUT_PROMPTS, as_chat, load_prompts
from ..testing import tiny_gpt2_pair
from ..viz.plots import plot_batch_sweep, plot_k_sweep
from .args import (
    device,
    existing_file,
    library_errors_to_usage,
    non_negative_float,
    positive_int,
    positive_int_list,
    probability,
    tree_shape,
    DYNAMIC_TREES,
    dynamic_settings,
    writable_path,
)

# heldout: the 30 held-out prompts beyond the varied five (never trained on, never tuned on by the chapters)
PROMPT_SETS = {"varied": DEFAULT_PROMPTS, "grounded": GROUNDED_PROMPTS, "heldout": HELDOUT_PROMPTS[len(DEFAULT_PROMPTS):]}



def _load(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedModel | Drafter, object, str]:
    """The pair the command line asks for, on the requested device and dtype."""
    dtype = getattr(torch, args.dtype)
    if args.preset in ("tiny-gpt2", "seed-gpt2") and not args.target:
        registered = None if args.draft is None else draft_kind(args.draft)
        if args.draft is not None and not (registered and registered.fits(None)):
            raise ValueError(f"--preset {args.preset} brings its own draft; --draft takes only a draft that fits any "
                             f"target there: {draft_names()}")
        device = pick_device(args.device)
        if args.preset == "tiny-gpt2":
            target, draft = (m.to(device, dtype) for m in tiny_gpt2_pair())
            if args.cpu_kernels:
                fast_on_cpu(target, draft)
            name, target_name = "tiny random GPT-2-style pair (4x256) + noisy copy", "tiny random GPT-2-style target (4x256)"
        else:
            (target, draft), name = seed_sized_pair(device, dtype, args.cpu_kernels), SEED_PAIR_NAME
            target_name = "seed-sized random GPT-2 target (24x1024, gpt2-medium's shape)"
        if registered is not None:
            draft = registered.build(target)
            name = f"{target_name} + {registered.label(draft)}"
        return target, draft, None, name
    pair = load_pair(None if args.target else args.preset, target=args.target, draft=args.draft,
                     device=args.device, dtype=dtype, cpu_kernels=args.cpu_kernels)
    return pair.target, pair.draft, pair.tokenizer, pair.name


def main(argv: Sequence[str] | None = None) -> dict | BenchResult:
    """Sweep k for a model pair; print a table, and optionally write JSON and a plot. `compare ...` runs compare."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare(argv[1:])
    if argv[:1] == ["replot"]:
        return replot(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m specdec_lib.bench", description=main.__doc__,
        epilog="python -m specdec_lib.bench compare --help: the four-way timing of chapter 04")
    parser.add_argument("--preset", choices=["smollm2", "gpt2", "tiny-gpt2", "seed-gpt2"], default="smollm2",
                        help="seed-gpt2: gpt2-medium / gpt2 sizes with random weights, for timing with --alpha")
    parser.add_argument("--target", help="hub name or path of a target model (with --draft)")
    parser.add_argument("--draft", help="draft model; with --preset smollm2: trained (default), eagle1 or eagle3 (its EAGLE heads, chapter 08; eagle: "
                        "the better of the two), a folder written by `python -m specdec_lib.training train|eagle|eagle3`, or a stand-in such as "
                        "int8; 'prompt-lookup' (any preset or --target): no draft model, n-gram lookup in the text; "
                        "or any name registered with specdec_lib.drafters.register_draft")
    parser.add_argument("--confidence-threshold", type=probability, default=None,
                        help="the draft model stops drafting after a token it gives less than this probability "
                        "(transformers' default 0.4); --k is then the maximum")
    parser.add_argument("--cost-aware", action="store_true",
                        help="the draft model also stops before a draft whose chance of passing does not pay for "
                        "verifying it, by the verification costs and c measured on this machine before timing (chapter 07)")
    parser.add_argument("--schedule", choices=["constant", "heuristic"], default="constant",
                        help="heuristic: the draft length grows by 2 after a fully accepted step, shrinks by 1 otherwise")
    parser.add_argument("--k", type=positive_int_list, default=[1, 2, 4, 6, 8], help="comma-separated, e.g. 1,2,4,8")
    parser.add_argument("--batch", type=positive_int_list, default=None,
                        help="sweep batch sizes instead of K, e.g. 1,2,4,8,16 (chapter 11): target-only (ours and "
                        "transformers' generate), speculative at each --k (default 1,2) and the cost-aware draft, "
                        "on left-padded batches of the prompts")
    parser.add_argument("--tree", type=tree_shape, action="append", default=[],
                        help="also time a token tree with these branching factors per depth, e.g. 2,2,1,1; 'dynamic': "
                        "a tree grown each step where the draft is confident (EAGLE-2); 'dynamic-costs': the same, "
                        "verifying only the nodes that pay by the step costs measured on this machine before timing "
                        "(chapter 09; draft models and EAGLE heads; repeat the flag for several trees)")
    parser.add_argument("--dynamic-tree", type=dynamic_settings, default=None, metavar="DEPTH,TOP_K,BUDGET",
                        help="settings of the dynamic trees (default: DynamicTree's, "
                        f"{DynamicTree().depth},{DynamicTree().top_k},{DynamicTree().budget})")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 (default) is greedy")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--prompts", type=existing_file,
                        help="file of prompts: a JSON list, or one per line (\\n for newlines)")
    parser.add_argument("--prompt-set", choices=sorted(PROMPT_SETS), default="varied",
                        help="built-in prompts when no --prompts file: varied (default), grounded (answers copy the input) or "
                        "heldout (30 more continuations in the varied styles, held out from draft training)")
    parser.add_argument("--num-prompts", type=positive_int, default=None, help="use only the first N prompts")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap each prompt in the tokenizer's chat template as a user turn and stop every method "
                        "at the end of the reply (the tokenizer's EOS); default: on for --prompt-set grounded, whose "
                        "prompts are instructions, when the tokenizer has a chat template, off otherwise")
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--device", type=device, default=None, help="cpu, cuda or mps (default: best available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--out", type=writable_path, help="write every run as JSON here")
    parser.add_argument("--plot", type=writable_path, help="write the speedup plots (PNG) here")
    parser.add_argument("--hf", action="store_true",
                        help="also time transformers' own version (assisted generation, or prompt lookup) per K")
    parser.add_argument("--no-cpu-kernels", dest="cpu_kernels", action="store_false",
                        help="keep PyTorch's stock CPU kernels (see specdec_lib.models.cpu_kernels)")
    parser.add_argument("--alpha", help="impose this acceptance rate instead of checking drafts (timing only): "
                        "a number, or a bench JSON of a real pair whose pooled alpha to use; needed by seed-gpt2")
    _loop_flags(parser, "the loop and the target-only run it is compared with")
    args = parser.parse_args(argv)
    _check_loop_flags(parser, args)
    if args.tree and args.compile:
        parser.error("--tree runs eagerly (its 4D masks change shape every step): drop --compile for tree runs")
    if args.tree and (args.alpha is not None or args.draft == PROMPT_LOOKUP):
        parser.error("--tree checks a draft model's guesses: it needs a draft model and no --alpha")
    if args.dynamic_tree and not any(t in DYNAMIC_TREES for t in args.tree):
        parser.error("--dynamic-tree sets the dynamic trees' settings: add --tree dynamic or --tree dynamic-costs")
    if args.tree and (args.confidence_threshold is not None or args.schedule != "constant" or args.cost_aware):
        parser.error("--confidence-threshold, --schedule and --cost-aware shape chains of drafts; a --tree has a fixed shape")
    if args.batch:
        clash = [flag for flag, on in (("--tree", args.tree), ("--alpha", args.alpha is not None), ("--hf", args.hf),
                                      ("--compile", args.compile), ("--temperature", args.temperature > 0),
                                      ("--confidence-threshold", args.confidence_threshold is not None),
                                      ("--schedule", args.schedule != "constant"), ("--cost-aware", args.cost_aware)) if on]
        if clash:
            parser.error(f"--batch sweeps greedy chains of fixed K against the cost-aware draft (always included); "
                         f"drop {', '.join(clash)}")
    imposed, alpha_source = None, None
    if args.alpha is not None:
        with library_errors_to_usage(parser, "--alpha"):
            imposed, alpha_source = read_alpha(args.alpha)
        if args.temperature > 0:
            parser.error("--alpha replaces the greedy check, so it needs --temperature 0")
    elif args.preset == "seed-gpt2":
        parser.error("--preset seed-gpt2 has random weights, so its draft never agrees: give --alpha, a number "
                     "or a bench JSON of a real pair (e.g. docs/results/cpu_smollm2.json)")
    if args.chat and args.preset in ("tiny-gpt2", "seed-gpt2") and not args.target:
        parser.error(f"--chat needs a tokenizer with a chat template; --preset {args.preset} has no tokenizer")
    with library_errors_to_usage(parser, "--prompts"):
        texts = (load_prompts(args.prompts) if args.prompts else list(PROMPT_SETS[args.prompt_set]))[: args.num_prompts]
    torch.manual_seed(0)
    with library_errors_to_usage(parser, "--target/--draft" if args.target else "--preset/--draft"):
        target, draft, tokenizer, name = _load(args)
    costs = None
    if args.confidence_threshold is not None or args.schedule != "constant" or args.cost_aware:
        if not isinstance(draft, torch.nn.Module):
            parser.error("--confidence-threshold, --schedule and --cost-aware shape a draft model's drafting; this draft has no model")
        model = draft
        draft = ModelDrafter(draft, confidence_threshold=args.confidence_threshold, schedule=args.schedule)
        name += f", drafting up to k tokens (confidence threshold {args.confidence_threshold}, schedule {args.schedule}"
        name += ", cost-aware)" if args.cost_aware else ")"
    if imposed is not None:
        name += f"\nacceptance IMPOSED at alpha {imposed:.3f} ({alpha_source}), not checked"
    if tokenizer is None:  # the random pairs have no tokenizer: random prompts of 8 tokens
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, target.config.vocab_size, (1, 8), generator=gen) for _ in texts]
        texts = [f"<random prompt {i}: {p.tolist()[0]}>" for i, p in enumerate(prompts)]
    chat = args.chat
    if chat is None:  # instructions go to an instruct model as a user turn, continuations as plain text
        chat = args.prompt_set == "grounded" and not args.prompts and bool(getattr(tokenizer, "chat_template", None))
    if chat and not getattr(tokenizer, "chat_template", None):
        parser.error("--chat needs a tokenizer with a chat template; this target's tokenizer has none (try --no-chat)")
    eos = tokenizer.eos_token_id if chat else None
    if tokenizer is not None:
        prompts = [tokenizer(as_chat(tokenizer, t) if chat else t, return_tensors="pt").input_ids for t in texts]
    if chat:
        name += "\nprompts in the chat template, each run stopping at the end of the reply"
    if args.batch:
        return batch_report(args, target, draft, prompts, texts, name, eos, tokenizer, explicit_k="--k" in argv)
    if args.cost_aware:  # measured now, on the first prompt, so that no timed run pays for it
        draft.costs = costs = measure_step_costs(target, model, prompts[0].to(target.device), max(args.k))
        print("step costs in single-token target calls: verify", {n: round(v, 3) for n, v in costs.verify.items()},
              f"draft {costs.draft:.3f}")
    trees = [dynamic_tree(args, t, target, draft, prompts[0]) if t in DYNAMIC_TREES else t for t in args.tree]
    print(f"{name}\ndevice {target.device}, {args.dtype}, {loop_label(args.cache, args.compile)}, temperature {args.temperature}, "
          f"{'up to ' if chat else ''}{args.max_new_tokens} new tokens x {len(prompts)} prompts, median of {args.repeats} repeats")
    runs = sweep_k(target, draft, prompts, args.k, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                   temperature=args.temperature, impose_alpha=imposed, include_hf=args.hf, trees=trees,
                   cache_implementation=args.cache, compile=args.compile, eos_token_id=eos)
    alpha, c = pooled_alpha_c(runs)
    best = max(chain_runs(runs), key=lambda r: r["speedup"])
    report = {
        "pair": name, "device": str(target.device), "device_name": device_name(target.device),
        "dtype": args.dtype, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats, "prompts": texts, "alpha_imposed": imposed, "alpha_source": alpha_source,
        "alpha": alpha, "c": c, "cpu_kernels": args.cpu_kernels, "prompt_set": None if args.prompts else args.prompt_set,
        "chat": chat,
        "confidence_threshold": args.confidence_threshold, "schedule": args.schedule, "cost_aware": args.cost_aware,
        "step_costs": None if costs is None else {"verify": costs.verify, "draft": costs.draft},
        "cache_implementation": args.cache, "compile": args.compile,
        "cpu_kernel_choices": kernel_table(),  # timed once per process: tells a change of kernel from one of draft
        "best_k_measured": best["k"], "best_k_predicted": optimal_k(alpha, c), "runs": runs,
    }
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print("wrote", args.out)
    if args.plot:
        report_figure(report).savefig(args.plot, dpi=120)
        print("wrote", args.plot)
    return report


def report_figure(report: dict) -> Figure:
    """The K sweep's plot of a report (a fresh run's, or one read back from its JSON)."""
    cache, compiled = report.get("cache_implementation", "dynamic"), report.get("compile", False)
    loop = "" if (cache, compiled) == ("dynamic", False) else f"\n{loop_label(cache, compiled)}"
    return plot_k_sweep(report["runs"], report["alpha"], report["c"], title=f"{report['pair']} ({report['device_name']}){loop}")


def replot(argv: Sequence[str] | None = None) -> dict:
    """Draw a committed K-sweep report again (the plots improve; the measurement stays): `bench replot r.json r.png`."""
    parser = argparse.ArgumentParser(prog="python -m specdec_lib.bench replot", description=replot.__doc__)
    parser.add_argument("report", type=Path, help="a JSON report written by --out")
    parser.add_argument("plot", type=writable_path, help="the PNG to write")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    if "runs" not in report or "alpha" not in report:
        raise SystemExit(f"{args.report} is not a K-sweep report (no runs/alpha): batch sweeps and compare runs have their own plots")
    report_figure(report).savefig(args.plot, dpi=120)
    print("wrote", args.plot)
    return report


def dynamic_tree(args: argparse.Namespace, kind: str, target: PreTrainedModel, draft, prompt: torch.Tensor) -> DynamicTree:
    """The dynamic tree a --tree value asks for; 'dynamic-costs' measures the step costs now, so that no timed run pays for it."""
    plan = DynamicTree(*args.dynamic_tree) if args.dynamic_tree else DynamicTree()
    if kind != "dynamic-costs":
        return plan
    costs = measure_step_costs(target, draft_model(draft), prompt.to(target.device), plan.budget)
    print("step costs for dynamic trees, in single-token target calls: verify",
          {n: round(v, 3) for n, v in costs.verify.items()}, f"draft {costs.draft:.3f}")
    return dataclasses.replace(plan, costs=costs)


def batch_report(args: argparse.Namespace, target: PreTrainedModel, draft, prompts: list, texts: list, name: str,
                 eos: int | None, tokenizer, explicit_k: bool) -> dict:
    """`--batch`: the batch-size sweep of chapter 11, printed, and written as JSON and a plot when asked."""
    ks = args.k if explicit_k else [1, 2]
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    pad = pad if pad is not None else (eos if eos is not None else 0)
    print(f"{name}\ndevice {target.device}, {args.dtype}, batch sizes {args.batch}, K {ks}, "
          f"{args.max_new_tokens} new tokens per row, median of {args.repeats} repeats")
    results = sweep_batch(target, draft, [p.view(-1) for p in prompts], args.batch, ks=ks, max_new_tokens=args.max_new_tokens,
                          repeats=args.repeats, cost_aware=isinstance(draft, torch.nn.Module), eos_token_id=eos, pad_token_id=pad)
    report = {"pair": name, "device": str(target.device), "device_name": device_name(target.device), "dtype": args.dtype,
              "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "ks": ks, "batch_sizes": args.batch,
              "prompts": texts, "prompt_set": None if args.prompts else args.prompt_set, "chat": eos is not None,
              "crossover": crossover(results), "runs": results}
    print(format_batch_sweep(results))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print("wrote", args.out)
    if args.plot:
        plot_batch_sweep(report).savefig(args.plot, dpi=120)
        print("wrote", args.plot)
    return report


def _loop_flags(parser: argparse.ArgumentParser, applies_to: str) -> None:
    """--cache and --compile (chapter 10), the same in both commands."""
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic",
                        help=f"KV cache of {applies_to}: dynamic (grows, cropped on rejection) or static "
                        "(preallocated, rolled back by position)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the fixed-size calls (CUDA graphs on a GPU); needs --cache static")


def _check_loop_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--compile only with --cache static: one usage line, before any model loads."""
    if args.compile and args.cache != "static":
        parser.error("--compile needs --cache static (a dynamic cache changes shape every step, so it would recompile)")


def compare(argv: Sequence[str] | None = None) -> BenchResult:
    """Time the four decoding methods on one pair and print the table and the ratios; --cache/--compile add two more."""
    parser = argparse.ArgumentParser(prog="python -m specdec_lib.bench compare", description=compare.__doc__)
    parser.add_argument("--pair", choices=["tiny-gpt2", "smollm2"], default="smollm2")
    parser.add_argument("--k", type=positive_int, default=4)
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--prompts", type=positive_int, default=2, help="how many built-in prompts to use")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face assisted generation")
    parser.add_argument("--device", type=device, default=None, help="cpu, cuda or mps (default: best available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--out", type=writable_path, help="write the table as JSON here")
    _loop_flags(parser, "extra methods next to the eager dynamic ones: static adds target only and our loop on a "
                "static cache, --compile adds them compiled as well")
    args = parser.parse_args(argv)
    _check_loop_flags(parser, args)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    if args.pair == "tiny-gpt2":
        name = "tiny random GPT-2-style pair (4x256) + noisy copy"
        target, draft = (m.to(pick_device(args.device), dtype) for m in tiny_gpt2_pair())
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, target.config.vocab_size, (1, 8), generator=gen) for _ in range(args.prompts)]
    else:
        with library_errors_to_usage(parser, "--pair"):
            target, draft, tokenizer, name = load_pair("smollm2", device=args.device, dtype=dtype)
        prompts = [tokenizer(p, return_tensors="pt").input_ids for p in DEFAULT_PROMPTS[: args.prompts]]
    # --cache static adds the static loop eagerly; --compile adds it compiled too: the whole 2x2 in one process.
    extra = [("static", False)] * (args.cache == "static") + [("static", True)] * args.compile
    print(name)
    result = benchmark(target, draft, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                       repeats=args.repeats, include_hf=not args.no_hf, extra_loops=extra)
    print(f"pair {args.pair}, k={args.k}, {args.max_new_tokens} new tokens x {len(prompts)} prompts, "
          f"median of {args.repeats} round-robin repeats, device {target.device} ({device_name(target.device)}), {args.dtype}")
    print(result.table())
    print(result.summary())
    print("outputs identical across methods:", result.outputs_agree)
    if args.out:
        Path(args.out).write_text(json.dumps(compare_report(result, name, target.device, args), indent=2))
        print("wrote", args.out)
    return result


def compare_report(result: BenchResult, pair: str, device: torch.device, args: argparse.Namespace) -> dict:
    """compare's table as JSON: each method's tokens/s, ratio to target only, calls, acceptance, exactness."""
    methods = {name: {"tokens_per_s": m.tokens_per_s, "vs_target_only": result.ratio(name),
                      "target_calls": m.target_calls, "acceptance_rate": m.acceptance,
                      "outputs_match_target": result.matches_target(name)} for name, m in result.methods.items()}
    loops = {}
    for loop in result.extra_loops:
        base_name, spec_name = loop_methods(*loop)
        loops[spec_name] = {"vs_its_target_only": result.ratio(spec_name, base_name),
                            **{f"vs_{hf}": result.ratio(spec_name, hf) for hf in methods if hf.startswith("HF")}}
    return {"pair": pair, "device": str(device), "device_name": device_name(device), "dtype": args.dtype, "k": args.k,
            "max_new_tokens": args.max_new_tokens, "prompts": args.prompts, "repeats": args.repeats,
            "alpha": result.alpha, "c": result.c, "methods": methods, "loops": loops}
