"""Chapter 08: held-out agreement of EAGLE-3 heads trained on more and more of the corpus (the data-scaling curve).

    python scripts/eagle3_scaling.py --corpus data/eagle3_corpus --store /tmp/eagle3_states \
        --sizes 150000,600000,1000000,2000000 --out docs/results/cpu_ch08_eagle3_scaling.json

Each size trains a fresh head (same seed, config and draft vocabulary) on the fewest leading chunks
that hold that many generated positions, so the sets are nested, for the same number of training
positions (--budget: more epochs over a small corpus, fewer over a large one), so the curve asks
what more distinct data buys at equal compute. Agreement is teacher-forced on the
held-out prompts (never trained on) for every draft step, and on rows held aside from the training
chunks. A size already in --out is skipped, and one whose chunks are not all stored yet waits for
a later run: the curve grows with the corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from specdec_lib.cli.args import existing_folder, int_list, positive_int
from specdec_lib.models import load_smollm2
from specdec_lib.models.eagle3_head import eagle3_from_target
from specdec_lib.training.chunked_corpus import read_manifest
from specdec_lib.training.evaluate import cached_held_out, heldout_states
from specdec_lib.training.train_eagle3 import (
    Eagle3Config,
    corpus_items,
    draft_vocabulary,
    make_batches,
    open_chunk,
    state_rms,
    stored_chunks,
    train_eagle3,
)


def leading_chunks(corpus: str, size: int) -> list[int] | None:
    """The fewest leading chunks (0, 1, 2, ...) holding `size` generated positions, or None if the corpus is smaller."""
    chunks, total = [], 0
    for entry in read_manifest(corpus)["chunks"]:
        if entry["chunk"] != len(chunks):
            break  # a gap: later chunks are not leading ones
        chunks.append(entry["chunk"])
        total += entry["generated"]
        if total >= size:
            return chunks
    return None


def budget_config(chunks: dict, budget: int, **settings) -> Eagle3Config:
    """A config that trains on `budget` positions of these chunks, evaluating about ten times along the way."""
    items = corpus_items(chunks, validation=False)
    epochs = budget / sum(item.length for item in items)
    steps = int(epochs * len(make_batches(items, Eagle3Config.batch_tokens, torch.Generator().manual_seed(0))))
    return Eagle3Config(epochs=epochs, eval_every=max(10, steps // 10), warmup=min(Eagle3Config.warmup, steps // 10), **settings)


def main() -> None:
    """Train one head per size not yet in --out and append its agreement to the curve."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=existing_folder, required=True)
    parser.add_argument("--store", type=existing_folder, required=True)
    parser.add_argument("--sizes", type=int_list, required=True, help="generated positions per run, comma-separated")
    parser.add_argument("--vocab-chunks", type=positive_int, default=8,
                        help="the first N chunks choose the draft vocabulary shared by every run (default 8)")
    parser.add_argument("--budget", type=positive_int, default=1_200_000,
                        help="training positions per run, whatever its size (default 1,200,000)")
    parser.add_argument("--ttt-steps", type=positive_int, default=Eagle3Config.ttt_steps)
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    done = {run["size"] for run in results["runs"]}
    target, tokenizer = load_smollm2(torch.device("cpu"), torch.float32)
    stored = set(stored_chunks(args.corpus, args.store))
    vocab_from = list(range(args.vocab_chunks))
    if not set(vocab_from) <= stored:
        raise SystemExit(f"the vocabulary needs chunks {vocab_from} stored in {args.store}")
    vocab = draft_vocabulary({c: open_chunk(args.corpus, args.store, c) for c in vocab_from}, 8192, target.config.vocab_size)
    rms = state_rms({0: open_chunk(args.corpus, args.store, 0)})  # one fc init for every run
    held = cached_held_out(target, tokenizer, Path(args.store) / "heldout")
    for size in sorted(set(args.sizes) - done):
        chunks = leading_chunks(args.corpus, size)
        if chunks is None or not set(chunks) <= stored:
            print(f"{size:,} positions: not enough chunks stored yet; run again later")
            continue
        opened = {c: open_chunk(args.corpus, args.store, c) for c in chunks}
        config = budget_config(opened, args.budget, ttt_steps=args.ttt_steps)
        head = eagle3_from_target(target, vocab, seed=0, input_rms=rms)
        states = heldout_states(target, held.sequences, head.target_layers)
        start = time.perf_counter()
        head, log = train_eagle3(target, head, opened, config, held_out=(held.sequences, states, held.n_prompt))
        kept = log[-1]["kept_step"]
        best = next(e for e in log if e.get("step") == kept)
        results["runs"].append({
            "size": size, "chunks": len(chunks),
            "generated": sum(len(r.tokens) - r.n_prompt for c in opened.values() for r in c.rows),
            "positions": sum(len(r.tokens) for c in opened.values() for r in c.rows),
            "epochs": round(config.epochs, 2), "kept_step": kept, "steps": log[-2]["step"],
            "train_minutes": round((time.perf_counter() - start) / 60, 1),
            "heldout": best["heldout"], "held_aside": best["val"], "log": log[:-1],
        })
        results["runs"].sort(key=lambda run: run["size"])
        results.update(config={k: v for k, v in asdict(config).items() if k not in ("epochs", "eval_every", "warmup")},
                       budget=args.budget, vocab_chunks=vocab_from,
                       command="python scripts/eagle3_scaling.py " + " ".join(sys.argv[1:]))
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{size:,} positions: held-out agreement " + " / ".join(f"{a:.3f}" for a in best["heldout"]))


if __name__ == "__main__":
    main()
