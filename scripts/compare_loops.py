"""Time this checkout's speculative loop against the loop of an earlier revision, in one process, round-robin.

    python scripts/compare_loops.py --rev 803ea4c --k 1,2,3 --out docs/results/cpu_loop_refactor.json

The earlier revision's `specdec_lib` is unpacked (git archive) under another package name, so both
loops run on the same models (the SmolLM2 pair, loaded once with this checkout's `load_pair`), the
same prompts and the same machine, taking turns in every round. Outputs must be identical; the
script fails if they are not. For a refactor: the new/old time ratio says what it cost.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch

from specdec_lib import load_pair, speculative_generate
from specdec_lib.cli.args import positive_int, positive_int_list
from specdec_lib.loop.timer import stopwatch
from specdec_lib.prompts import DEFAULT_PROMPTS

ROOT = Path(__file__).resolve().parent.parent


def old_library(rev: str, into: Path):
    """The `specdec_lib` package of revision `rev`, importable as `specdec_rev`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "specdec_lib"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "specdec_lib").rename(into / "specdec_rev")  # its imports are relative, so a new name works
    sys.path.insert(0, str(into))
    return importlib.import_module("specdec_rev")


def main(argv: list[str] | None = None) -> dict:
    """Time both loops per K over the benchmark prompts; print and optionally write the medians and ratios."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rev", required=True, help="the earlier revision, e.g. a commit before a refactor")
    parser.add_argument("--k", type=positive_int_list, default=[1, 2, 3])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old = old_library(args.rev, Path(tmp))
        torch.manual_seed(0)
        target, draft, tokenizer, name = load_pair("smollm2")
        prompts = [tokenizer(p, return_tensors="pt").input_ids for p in DEFAULT_PROMPTS]
        loops = {"old": old.speculative_generate, "new": speculative_generate}

        def run(version: str, k: int) -> list[torch.Tensor]:
            return [loops[version](target, draft, p, max_new_tokens=args.max_new_tokens, k=k).sequences for p in prompts]

        for k in args.k:  # warm-up, and the exactness check: both loops write the same tokens
            if not all(torch.equal(a, b) for a, b in zip(run("old", k), run("new", k))):
                raise SystemExit(f"k {k}: the two loops' outputs differ")
        seconds = {(v, k): [] for v in loops for k in args.k}
        for r in range(args.repeats):
            for k in args.k:
                for version in (("old", "new") if r % 2 == 0 else ("new", "old")):  # alternate who goes first
                    seconds[(version, k)].append(stopwatch(lambda: run(version, k))[0])
    median = {key: statistics.median(s) for key, s in seconds.items()}
    rows = [{"k": k, "old_s": median[("old", k)], "new_s": median[("new", k)],
             "new_over_old_time": median[("new", k)] / median[("old", k)]} for k in args.k]
    total = sum(median[("new", k)] for k in args.k) / sum(median[("old", k)] for k in args.k)
    report = {"command": "python scripts/compare_loops.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "pair": name, "rev": args.rev, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats, "outputs_identical": True, "runs": rows, "new_over_old_time_all_k": total}
    for row in rows:
        print(f"k {row['k']}: old {row['old_s']:.2f} s, new {row['new_s']:.2f} s, new/old time {row['new_over_old_time']:.3f}")
    print(f"all k: new/old time {total:.3f} (medians of {args.repeats} round-robin repeats, {len(prompts)} prompts "
          f"x {args.max_new_tokens} tokens)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
