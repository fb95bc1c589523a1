"""The training command line (chapters 06 and 08): `python -m specdec_lib.training data|train|eval|eagle|onpolicy`.

    python -m specdec_lib.training data  --out corpus.pt          # the target's generations (~25 CPU-min)
    python -m specdec_lib.training train --data corpus.pt --out my_draft
    python -m specdec_lib.training eval  --drafts trained,int8   # held-out agreement and c
    python -m specdec_lib.training eagle --data corpus.pt --out my_eagle   # chapter 08: train_eagle.py
    python -m specdec_lib.training onpolicy --out onpolicy.pt  # chapter 08: on_policy.py; then train --init

The exact commands behind the shipped draft are in specdec_lib/assets/smollm2_draft/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..bench.theory import expected_speedup, optimal_k
from ..drafters import PROMPT_LOOKUP, draft_kind
from ..models import load_smollm2, pick_device, smollm2_draft
from ..models.cpu_kernels import use_small_batch_linear
from ..models.draft_model import SMOLLM2_DRAFT_DIR, load_draft, save_draft
from ..models.eagle_head import eagle_from_draft
from ..models.pairs import is_saved_draft, stand_in_draft_check
from ..prompts import HELDOUT_PROMPTS, training_prompts
from ..training.corpus import generate_corpus, load_corpus, save_corpus
from ..training.evaluate import cached_held_out, held_out_set, score_draft, target_features
from ..training.on_policy import on_policy_corpus
from ..training.train_draft import TrainConfig, train, vocab_coverage
from ..training.train_eagle import EagleConfig, load_eagle_data, train_eagle
from .args import (
    device,
    existing_files,
    existing_folder,
    int_list,
    library_errors_to_usage,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    writable_path,
)


def _data(args: argparse.Namespace) -> None:
    """Generate the self-distillation corpus and save it."""
    target, tokenizer = load_smollm2(pick_device(args.device), torch.float32)
    prompts = training_prompts(seed=args.seed)[args.start :][: args.max_prompts]
    samples = generate_corpus(
        target, tokenizer, prompts, minutes=args.minutes, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, seed=args.seed,
    )
    save_corpus(samples, args.out)
    n = sum(len(s.topk_ids) for s in samples)
    print(f"{len(samples)} sequences, {n} target tokens with top-k logits -> {args.out}", file=sys.stderr)


def _on_policy(args: argparse.Namespace) -> None:
    """Write the draft's continuations of the training prompts, with the target's top-k logits, as a corpus."""
    target, tokenizer = load_smollm2(pick_device(args.device), torch.float32)
    draft = load_draft(target, args.draft or SMOLLM2_DRAFT_DIR)
    prompts = training_prompts(seed=args.seed)[: args.max_prompts]
    samples = on_policy_corpus(target, draft, tokenizer, prompts, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, seed=args.seed)
    save_corpus(samples, args.out)
    n = sum(len(s.topk_ids) for s in samples)
    print(f"{len(samples)} draft continuations, {n} tokens labelled by the target -> {args.out}", file=sys.stderr)


def _train(args: argparse.Namespace) -> None:
    """Distil a draft from the saved corpus and write it, with its training log, to --out."""
    target, tokenizer = load_smollm2(torch.device("cpu"), torch.float32)
    if max(args.layers) >= target.config.num_hidden_layers:
        raise ValueError(f"--layers: the target has layers 0..{target.config.num_hidden_layers - 1}, got {args.layers}")
    paths = args.data
    samples = [s for path in paths for s in load_corpus(path)]
    held_out = cached_held_out(target, tokenizer, paths[0])
    config = TrainConfig(
        layers=tuple(args.layers), vocab_size=args.vocab_size, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every, seed=args.seed,
    )
    init = None if args.init is None else load_draft(target, args.init)
    start = time.perf_counter()
    draft, log = train(target, samples, held_out, config, init=init)
    minutes = (time.perf_counter() - start) / 60
    save_draft(draft, args.out)
    record = {
        "command": "python -m specdec_lib.training " + " ".join(sys.argv[1:]),
        "config": asdict(config),
        "init": args.init,
        "corpus": {"sequences": len(samples), "target_tokens": sum(len(s.topk_ids) for s in samples)},
        "vocab_coverage": vocab_coverage(samples, draft.vocab_ids.cpu()),
        "train_minutes": round(minutes, 1),
        "log": log,
    }
    (Path(args.out) / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"held-out greedy agreement {log[-1]['agreement']:.3f} after {minutes:.0f} min -> {args.out}", file=sys.stderr)


def _eval(args: argparse.Namespace) -> None:
    """Print held-out greedy agreement, c and the predicted best K for each named draft of the SmolLM2 target."""
    target, tokenizer = load_smollm2(torch.device("cpu"), torch.float32)
    use_small_batch_linear(target)  # time both models as load_pair runs them
    held_out = held_out_set(target, tokenizer, HELDOUT_PROMPTS, max_new_tokens=args.max_new_tokens)
    print(f"{len(HELDOUT_PROMPTS)} held-out prompts x {args.max_new_tokens} greedy tokens of the target")
    width = max(10, *(len(kind) + 2 for kind in args.drafts))  # folder names can be long
    print(f"{'draft':<{width}}{'agreement':>10}{'c':>7}{'best K':>8}{'predicted':>11}  about")
    for kind in args.drafts:
        draft, about = smollm2_draft(target, kind)
        alpha, c = score_draft(target, draft, held_out)
        k = optimal_k(alpha, c)
        print(f"{kind:<{width}}{alpha:>10.3f}{c:>7.3f}{k:>8}{expected_speedup(alpha, k, c):>10.2f}x  {about}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m specdec_lib.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (default 0: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", parents=[common], help="generate the target's continuations and top-k logits")
    data.add_argument("--minutes", type=positive_float, default=60.0, help="stop after this long (default 60)")
    data.add_argument("--batch-size", type=positive_int, default=32)
    data.add_argument("--max-new-tokens", type=positive_int, default=96)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--start", type=non_negative_int, default=0, help="skip the first START prompts (to extend a corpus)")
    data.add_argument("--max-prompts", type=positive_int, default=None, help="use at most this many prompts")
    data.add_argument("--device", type=device, default="cpu", help="where the target generates (default cpu; cuda is ~50x faster)")
    data.add_argument("--out", type=writable_path, required=True)
    data.set_defaults(run=_data)
    fit = sub.add_parser("train", parents=[common], help="distil a draft from a corpus made by `data`")
    fit.add_argument("--data", type=existing_files, required=True, help="corpus file(s) from `data`, comma-separated")
    fit.add_argument("--layers", type=int_list, default=[0, 1], help="target layers the draft starts from (default: 0,1)")
    fit.add_argument("--vocab-size", type=positive_int, default=8192)
    fit.add_argument("--steps", type=positive_int, default=1000)
    fit.add_argument("--batch-size", type=positive_int, default=16)
    fit.add_argument("--lr", type=positive_float, default=1e-3)
    fit.add_argument("--eval-every", type=positive_int, default=100)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--init", type=existing_folder, default=None,
                     help="go on training this draft folder (weights and vocabulary) instead of starting from --layers")
    fit.add_argument("--out", type=writable_path, required=True, help="folder to write the draft into")
    fit.set_defaults(run=_train)
    add_eagle_command(sub, common)
    own = sub.add_parser("onpolicy", parents=[common], help="the draft's own continuations, labelled by the target (DistillSpec)")
    own.add_argument("--draft", type=existing_folder, default=None, help="draft folder (default: the shipped draft)")
    own.add_argument("--batch-size", type=positive_int, default=32)
    own.add_argument("--max-new-tokens", type=positive_int, default=96)
    own.add_argument("--seed", type=int, default=0, help="training-prompt seed (chapter 06's corpus used 0)")
    own.add_argument("--max-prompts", type=positive_int, default=None, help="use at most this many prompts")
    own.add_argument("--device", type=device, default="cpu")
    own.add_argument("--out", type=writable_path, required=True)
    own.set_defaults(run=_on_policy)
    score = sub.add_parser("eval", parents=[common], help="score drafts of the SmolLM2 target on the held-out prompts")
    score.add_argument("--drafts", type=_draft_names, default="trained,eagle,int8,layers8,bf16",
                       help="comma-separated draft names (any registered draft that runs a model) or folders written by train/eagle "
                       "(an EAGLE head: agreement of a step's 1st draft)")
    score.add_argument("--max-new-tokens", type=positive_int, default=64)
    score.set_defaults(run=_eval)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with library_errors_to_usage(parser):
        args.run(args)


def _draft_names(text: str) -> list[str]:
    """Comma-separated draft names of the SmolLM2 target: registered drafts (trained, eagle, ...), folders, or stand-ins."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"takes comma-separated draft names, got {text!r}")
    for name in names:
        if name == PROMPT_LOOKUP:
            raise argparse.ArgumentTypeError("eval scores draft models; prompt lookup has none (use bench --draft prompt-lookup)")
        if draft_kind(name) is None and not is_saved_draft(name):  # a registered name, or a folder: a draft you trained
            try:
                stand_in_draft_check(name, torch.device("cpu"))
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
    return names


def add_eagle_command(sub, common: argparse.ArgumentParser) -> None:
    """The `eagle` subcommand of `python -m specdec_lib.training`."""
    eagle = sub.add_parser("eagle", parents=[common], help="train an EAGLE head on a corpus made by `data` (chapter 08)")
    eagle.add_argument("--data", type=existing_files, required=True, help="corpus file(s) from `data`, comma-separated")
    eagle.add_argument("--init", type=existing_folder, default=str(SMOLLM2_DRAFT_DIR),
                       help="token-only draft to start from (default: the shipped one)")
    eagle.add_argument("--steps", type=positive_int, default=1000)
    eagle.add_argument("--batch-size", type=positive_int, default=16)
    eagle.add_argument("--lr", type=positive_float, default=5e-4)
    eagle.add_argument("--feature-weight", type=non_negative_float, default=1.0, help="weight of the smooth-L1 feature loss")
    eagle.add_argument("--noise", type=non_negative_float, default=0.0, help="uniform noise on input features (EAGLE)")
    eagle.add_argument("--no-unroll", dest="unroll", action="store_false",
                       help="skip the second pass on the head's own predicted features")
    eagle.add_argument("--eval-every", type=positive_int, default=100)
    eagle.add_argument("--seed", type=int, default=0)
    eagle.add_argument("--out", type=writable_path, required=True, help="folder to write the head into")
    eagle.set_defaults(run=_eagle)


def _eagle(args: argparse.Namespace) -> None:
    """Compute (or reuse) the target's features, train the head from --init and write it with its training log."""
    target, tokenizer = load_smollm2(torch.device("cpu"), torch.float32)
    start = time.perf_counter()
    data = load_eagle_data(target, args.data)
    held_out = cached_held_out(target, tokenizer, args.data[0])
    held_features = target_features(target, held_out.sequences, progress=False)
    feature_minutes = (time.perf_counter() - start) / 60
    config = EagleConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, feature_weight=args.feature_weight,
                         unroll=args.unroll, noise=args.noise, eval_every=args.eval_every, seed=args.seed)
    head = eagle_from_draft(load_draft(target, args.init))
    start = time.perf_counter()
    head, log = train_eagle(target, head, data, config, held_out=(held_out, held_features))
    minutes = (time.perf_counter() - start) / 60
    save_draft(head, args.out)
    best = max(log, key=lambda e: e["val_1"])
    record = {
        "command": "python -m specdec_lib.training " + " ".join(sys.argv[1:]),
        "config": asdict(config),
        "init": Path(args.init).name,  # a folder name: absolute paths differ from machine to machine
        "corpus": {"sequences": len(data.tokens), "positions": sum(len(t) for t in data.tokens)},
        "feature_minutes": round(feature_minutes, 1),
        "train_minutes": round(minutes, 1),
        "kept_step": best["step"],
        "log": log,
    }
    (Path(args.out) / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"kept step {best['step']}: held-out agreement {best.get('heldout_1', float('nan')):.3f} (1st draft), "
          f"{best.get('heldout_2', float('nan')):.3f} (2nd) after {minutes:.0f} min -> {args.out}", file=sys.stderr)
