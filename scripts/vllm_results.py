"""Chapter 12's committed measurements: the course's loop against vLLM, and a batch sweep in vLLM (about 17 min on 2 cores).

Run from the course's venv after `make vllm`:
    .venv/bin/python scripts/vllm_results.py --out docs/results/cpu_ch12_vllm.json
Every vLLM run is its own `.venv-vllm` process (`python -m specdec_lib.serving run`); its load time is
reported apart and left out of tokens/s, as is a short warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from specdec_lib.models import load_pair
from specdec_lib.prompts import HELDOUT_PROMPTS
from specdec_lib.serving.client import vllm_run, vllm_serve
from specdec_lib.serving.course import course_run
from specdec_lib.testing import first_difference
from specdec_lib.serving.layout import METHODS

SPECULATIVE = [m for m in METHODS if m != "none"]


def compare(prompts: list[str], k: int, max_tokens: int) -> dict:
    """Each method through vLLM (batch 1) and through the course's loop: outputs and acceptance side by side."""
    target, _, tokenizer, _ = load_pair("smollm2", device="cpu")  # on the CPU kernels the course runs on
    runs: dict[str, dict] = {}
    for method in tqdm(METHODS, desc="compare (vLLM, then the course's loop)"):
        runs[method] = {"vllm": vllm_run(method, k, prompts, 1, max_tokens), "course": course_run(target, tokenizer, method, k, prompts, max_tokens)}
    plain = runs["none"]["vllm"]["token_ids"]
    greedy = []
    for prompt, ours, theirs in zip(prompts, runs["none"]["course"]["token_ids"], plain):
        ours, theirs = torch.tensor(ours), torch.tensor(theirs)  # both max_tokens long (no stop at end-of-text)
        if torch.equal(ours, theirs):
            greedy.append({"same": True})
        else:  # where they part, and the target's logit gap between the two tokens: near 0 is a near tie
            position, gap = first_difference(target, torch.tensor(tokenizer(prompt).input_ids), ours, theirs)
            greedy.append({"same": False, "position": position, "gap": gap})
    return {"prompts": prompts, "k": k, "max_tokens": max_tokens, "runs": runs, "course_vs_vllm_greedy": greedy,
            "speculative_equals_plain": {m: runs[m]["vllm"]["token_ids"] == plain for m in SPECULATIVE}}


def sweep(prompts: list[str], k: int, max_tokens: int, sizes: list[int]) -> list[dict]:
    """tokens/s and acceptance in vLLM per batch size and method (the first B prompts at batch B, as chapter 11 does)."""
    rows = []
    for batch in tqdm(sizes, desc="vLLM batch sweep"):
        plain = None
        for method in METHODS:  # "none" first: the others are compared with it
            run = vllm_run(method, k, prompts[:batch], batch, max_tokens)
            plain = run["token_ids"] if method == "none" else plain
            rows.append({**{key: run[key] for key in ("method", "k", "batch", "tokens_per_s", "seconds", "load_seconds", "acceptance")},
                         "same_as_plain": None if method == "none" else run["token_ids"] == plain})
    return rows


def main() -> None:
    """Measure and write one JSON file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/results/cpu_ch12_vllm.json"))
    parser.add_argument("--k", type=int, default=3, help="draft tokens per step in the comparison")
    parser.add_argument("--sweep-k", type=int, default=2, help="draft tokens per step in the batch sweep (chapter 11's K = 2 row)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--sizes", default="1,4,8,16")
    args = parser.parse_args()
    started = time.perf_counter()
    heldout = list(HELDOUT_PROMPTS[5:])  # chapter 11's sweep prompts; the comparison takes its first eight
    result = {"device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads in the course's loop)",
              "command": "python scripts/vllm_results.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "compare": compare(heldout[:8], args.k, args.max_tokens),
              "sweep": sweep(heldout, args.sweep_k, args.max_tokens, [int(s) for s in args.sizes.split(",")]),
              "server": vllm_serve("draft", args.k, heldout[0], 32)}
    result["minutes"] = (time.perf_counter() - started) / 60
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['minutes']:.1f} min")


if __name__ == "__main__":
    main()
