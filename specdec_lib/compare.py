"""Chapter 04's four-way timing from the command line: `python -m specdec_lib.compare --pair tiny-gpt2`.

Target alone, our speculative loop uncached and cached, and Hugging Face assisted generation,
on one pair, prompt set and k, timed round-robin in one process.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import torch

from .bench import BenchResult, benchmark, tiny_gpt2_pair
from .prompts import DEFAULT_PROMPTS
from .models import load_pair


def main(argv: Sequence[str] | None = None) -> BenchResult:
    """Time the four decoding methods on one pair and print the table and the ratios."""
    parser = argparse.ArgumentParser(prog="python -m specdec_lib.compare", description=main.__doc__)
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
        target, draft, tokenizer, name = load_pair("smollm2")
        print(name)
        prompts = [tokenizer(p, return_tensors="pt").input_ids for p in DEFAULT_PROMPTS[: args.prompts]]
    result = benchmark(target, draft, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                       repeats=args.repeats, include_hf=not args.no_hf)
    print(f"pair {args.pair}, k={args.k}, {args.max_new_tokens} new tokens x {len(prompts)} prompts, "
          f"median of {args.repeats} round-robin repeats, device {target.device}")
    print(result.table())
    print(result.summary())
    print("outputs identical across methods:", result.outputs_agree)
    return result


if __name__ == "__main__":
    main()
