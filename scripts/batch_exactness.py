"""Check, on the embedded pair, that every row of a batch equals that row decoded alone (chapter 11's first goal).

    python scripts/batch_exactness.py --batch 8 --k 1,2,4 --out docs/results/cpu_batch_exactness.json

For each drafter (the trained draft, the EAGLE head, prompt lookup), each cache kind and each K,
decodes B held-out prompts as one left-padded batch and compares each row with the target's own
greedy decoding of that row alone (`autoregressive_generate`, one row). A row that differs must do
so at a near tie of the target's logits (gap under 1e-3 at the first difference): those are counted
and listed; any other difference fails the script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdec_lib import autoregressive_generate, load_pair, speculative_generate
from specdec_lib.cli.args import positive_int, positive_int_list
from specdec_lib.drafters import draft_kind
from specdec_lib.prompts import DEFAULT_PROMPTS, HELDOUT_PROMPTS
from specdec_lib.testing import first_difference

NEAR_TIE = 1e-3


def main(argv: list[str] | None = None) -> dict:
    """Run the check; print and optionally write what it found."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--k", type=positive_int_list, default=[1, 2, 4])
    parser.add_argument("--max-new-tokens", type=positive_int, default=48)
    parser.add_argument("--drafts", default="trained,eagle,prompt-lookup", help="comma-separated registered draft names")
    parser.add_argument("--out", help="write the findings as JSON here")
    args = parser.parse_args(argv)
    texts = list(HELDOUT_PROMPTS[len(DEFAULT_PROMPTS):][: args.batch])
    target, _, tokenizer, name = load_pair()
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = batch.input_ids.to(target.device), batch.attention_mask.to(target.device)
    rows = [ids[b, ids.shape[1] - int(mask[b].sum()):] for b in range(len(texts))]
    alone = [autoregressive_generate(target, r[None], max_new_tokens=args.max_new_tokens)[0, len(r):] for r in rows]
    findings, failures = [], []
    runs = [(d, cache, k) for d in args.drafts.split(",") for cache in ("dynamic", "static") for k in args.k]
    for draft_name, cache, k in tqdm(runs, desc="batched runs"):
        drafter = draft_kind(draft_name).build(target)
        out = speculative_generate(target, drafter, ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, k=k,
                                   cache_implementation=cache, pad_token_id=tokenizer.pad_token_id)
        ties = []
        for b, (row, ref) in enumerate(zip(rows, alone)):
            got = out.sequences[b, ids.shape[1]:]
            if torch.equal(got, ref):
                continue
            index, gap = first_difference(target, row, ref, got)
            (ties if gap < NEAR_TIE else failures).append({"row": b, "token": index, "gap": gap})
        findings.append({"draft": draft_name, "cache": cache, "k": k, "rows": len(rows),
                         "identical": len(rows) - len(ties), "near_ties": ties, "alpha": out.stats.acceptance_rate,
                         "tokens_per_call": out.stats.mean_accepted_length})
        print(f"{draft_name:>14} {cache:>7} K={k}: {len(rows) - len(ties)}/{len(rows)} rows identical, "
              f"{len(ties)} near ties, alpha {out.stats.acceptance_rate:.2f}")
    report = {"pair": name, "batch": args.batch, "max_new_tokens": args.max_new_tokens, "prompts": texts,
              "near_tie": NEAR_TIE, "runs": findings, "failures": failures}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print("wrote", args.out)
    if failures:
        print("rows differing by more than a near tie:", failures, file=sys.stderr)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
