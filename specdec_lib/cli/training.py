"""The training command line (chapters 06 and 08): `python -m specdec_lib.training data|train|eval|eagle|onpolicy`.

    python -m specdec_lib.training data  --out corpus.pt          # the target's generations (~25 CPU-min)
    python -m specdec_lib.training train --data corpus.pt --out my_draft
    python -m specdec_lib.training eval  --drafts trained,int8   # held-out agreement and c
    python -m specdec_lib.training eagle --data corpus.pt --out my_eagle   # chapter 08: train_eagle.py
    python -m specdec_lib.training onpolicy --out onpolicy.pt  # chapter 08: on_policy.py; then train --init
    python -m specdec_lib.training corpus --out data/eagle3_corpus --chunks 0:48   # chapter 08: EAGLE-3's corpus, resumable
    python -m specdec_lib.training features --corpus data/eagle3_corpus --store /tmp/eagle3_states   # its target states
    python -m specdec_lib.training eagle3 --corpus data/eagle3_corpus --store /tmp/eagle3_states --out my_eagle3

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
from ..models.eagle3_head import default_target_layers, eagle3_from_target, load_eagle3
from ..training.chunked_corpus import ChunkSpec, build_corpus, corpus_chunks, read_manifest
from ..training.train_eagle3 import (
    Eagle3Config,
    check_store_layers,
    build_features,
    draft_vocabulary,
    heldout_states,
    open_chunk,
    state_rms,
    stored_chunks,
    train_eagle3,
    vocabulary_coverage,
)
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


def _corpus(args: argparse.Namespace) -> None:
    """Build the chunks of the EAGLE-3 corpus that are not on disk yet (resumable; each chunk from its own seed)."""
    device = pick_device(args.device)
    target, tokenizer = load_smollm2(device, torch.float32)
    target = target.to(getattr(torch, args.dtype))
    about = {"command": "python -m specdec_lib.training " + " ".join(sys.argv[1:]), "dtype": args.dtype,
             "torch": torch.__version__, "device": device.type}
    spec = ChunkSpec(batch_size=args.batch_size)
    built = build_corpus(target, tokenizer, args.out, args.chunks, spec=spec, minutes=args.minutes, about=about)
    chunks = read_manifest(args.out)["chunks"]
    print(f"built {len(built)} chunks now; {args.out} holds {len(chunks)} chunks, "
          f"{sum(c['generated'] for c in chunks):,} generated tokens in {sum(c['sequences'] for c in chunks):,} sequences",
          file=sys.stderr)


def _features(args: argparse.Namespace) -> None:
    """Store the float32 target's states for every corpus chunk not stored yet; with --follow, wait for new chunks."""
    target, _ = load_smollm2(pick_device(args.device), torch.float32)
    layers = default_target_layers(target.config.num_hidden_layers)
    idle_since = time.monotonic()
    while True:
        todo = [c for c in corpus_chunks(args.corpus) if c in args.chunks and c not in stored_chunks(args.corpus, args.store)]
        if todo:
            build_features(target, args.corpus, args.store, todo, layers)
            idle_since = time.monotonic()
        elif args.follow is None or time.monotonic() - idle_since > 60 * args.follow:
            break
        else:
            time.sleep(30)
    print(f"{len(stored_chunks(args.corpus, args.store))} chunks' states in {args.store}", file=sys.stderr)


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
    add_eagle3_command(sub, common)
    big = sub.add_parser("corpus", parents=[common], help="build the EAGLE-3 corpus in chunks, token ids only (resumable)")
    big.add_argument("--out", type=writable_path, required=True, help="corpus folder (chunk_NNNNN.npz + manifest.json)")
    big.add_argument("--chunks", type=chunk_range, default=range(0, 48), help="chunk numbers START:STOP (default 0:48)")
    big.add_argument("--minutes", type=positive_float, default=None, help="stop after the chunk during which this runs out")
    big.add_argument("--batch-size", type=positive_int, default=ChunkSpec.batch_size, help="rows decoded at once")
    big.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                     help="the target's dtype while generating (default bfloat16: ~1.7x faster on CPU; labels are float32)")
    big.add_argument("--device", type=device, default="cpu")
    big.set_defaults(run=_corpus)
    states = sub.add_parser("features", parents=[common], help="store the target's states for the EAGLE-3 corpus (resumable)")
    states.add_argument("--corpus", type=existing_folder, required=True, help="corpus folder written by `corpus`")
    states.add_argument("--store", type=writable_path, required=True,
                        help="folder for the states (about 3.5 KB a position: keep it out of the repository)")
    states.add_argument("--chunks", type=chunk_range, default=range(0, 10_000), help="only these chunks (START:STOP)")
    states.add_argument("--follow", type=positive_float, default=None,
                        help="keep waiting for new chunks until none has come for this many minutes")
    states.add_argument("--device", type=device, default="cpu")
    states.set_defaults(run=_features)
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
    score.add_argument("--drafts", type=_draft_names, default="trained,eagle1,eagle3,int8,layers8,bf16",
                       help="comma-separated draft names (any registered draft that runs a model) or folders written by train/eagle/eagle3 "
                       "(an EAGLE head: agreement of a step's 1st draft)")
    score.add_argument("--max-new-tokens", type=positive_int, default=64)
    score.set_defaults(run=_eval)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with library_errors_to_usage(parser):
        args.run(args)


def chunk_range(text: str) -> range:
    """START:STOP (or a single chunk number) as a range of chunk numbers."""
    try:
        start, _, stop = text.partition(":")
        start = int(start)
        stop = int(stop) if stop else start + 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes chunk numbers START:STOP such as 0:48, got {text!r}") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"needs 0 <= START < STOP, got {text!r}")
    return range(start, stop)


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


def add_eagle3_command(sub, common: argparse.ArgumentParser) -> None:
    """The `eagle3` subcommand of `python -m specdec_lib.training`."""
    e3 = sub.add_parser("eagle3", parents=[common], help="train an EAGLE-3 head on the chunked corpus and its stored states")
    e3.add_argument("--corpus", type=existing_folder, required=True, help="corpus folder written by `corpus`")
    e3.add_argument("--store", type=existing_folder, required=True, help="states written by `features`")
    e3.add_argument("--chunks", type=chunk_range, default=None, help="train on these chunks (START:STOP; default: all stored)")
    e3.add_argument("--vocab-chunks", type=chunk_range, default=None,
                    help="chunks whose greedy tokens choose the draft vocabulary (default: --chunks)")
    e3.add_argument("--vocab-size", type=positive_int, default=8192)
    e3.add_argument("--ttt-steps", type=positive_int, default=Eagle3Config.ttt_steps, help="unrolled draft steps in training")
    e3.add_argument("--epochs", type=positive_float, default=Eagle3Config.epochs)
    e3.add_argument("--batch-tokens", type=positive_int, default=Eagle3Config.batch_tokens)
    e3.add_argument("--lr", type=positive_float, default=Eagle3Config.lr)
    e3.add_argument("--eval-every", type=positive_int, default=Eagle3Config.eval_every)
    e3.add_argument("--patience", type=positive_int, default=Eagle3Config.patience,
                    help="stop after this many evaluations without a better held-aside agreement")
    e3.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (slower on CPU)")
    e3.add_argument("--device", type=device, default="cpu", help="where the target and the head run (default cpu)")
    e3.add_argument("--seed", type=int, default=0)
    e3.add_argument("--init", type=existing_folder, default=None,
                    help="go on training this head folder (its weights and draft vocabulary; a fresh optimizer and schedule)")
    e3.add_argument("--out", type=writable_path, required=True, help="folder to write the head into")
    e3.set_defaults(run=_eagle3)


def _stored(args: argparse.Namespace, chunks: range | None) -> dict:
    """The stored chunks in `chunks` (all of them if None), opened; a clear error when none is."""
    present = [c for c in stored_chunks(args.corpus, args.store) if chunks is None or c in chunks]
    if not present:
        raise ValueError(f"no chunk{'' if chunks is None else f' in {chunks.start}:{chunks.stop}'} has stored states in "
                         f"{args.store}; run `python -m specdec_lib.training features` first")
    return {c: open_chunk(args.corpus, args.store, c) for c in present}


def _earlier_record(folder: str | None) -> dict | str | None:
    """The training record of the head a run started from (its folder's name when it has none)."""
    if folder is None:
        return None
    record = Path(folder) / "training.json"
    return json.loads(record.read_text()) if record.exists() else str(folder)


def _eagle3(args: argparse.Namespace) -> None:
    """Train an EAGLE-3 head on the stored chunks; write it with its training log and held-out agreement curve."""
    target, tokenizer = load_smollm2(pick_device(args.device), torch.float32)
    chunks = _stored(args, args.chunks)
    vocab_chunks = chunks if args.vocab_chunks is None else _stored(args, args.vocab_chunks)
    if args.init is None:
        vocab_ids = draft_vocabulary(vocab_chunks, args.vocab_size, target.config.vocab_size)
        head = eagle3_from_target(target, vocab_ids, seed=args.seed, input_rms=state_rms(chunks))
    else:  # a second round: the earlier head's weights and vocabulary, its record kept in ours
        head = load_eagle3(target, args.init)
        vocab_ids = head.vocab_ids.cpu()
    check_store_layers(args.store, head.target_layers)
    held_out = cached_held_out(target, tokenizer, Path(args.store) / "heldout")
    held = (held_out.sequences, heldout_states(target, held_out.sequences, head.target_layers), held_out.n_prompt)
    config = Eagle3Config(ttt_steps=args.ttt_steps, epochs=args.epochs, batch_tokens=args.batch_tokens, lr=args.lr,
                          eval_every=args.eval_every, patience=args.patience, bf16=args.bf16, seed=args.seed)
    start = time.perf_counter()
    head, log = train_eagle3(target, head, chunks, config, held_out=held)
    minutes = (time.perf_counter() - start) / 60
    save_draft(head, args.out)
    kept = log[-1]["kept_step"]
    best = next(e for e in log if e.get("step") == kept)
    generated = sum(len(r.tokens) - r.n_prompt for c in chunks.values() for r in c.rows)
    record = {
        "command": "python -m specdec_lib.training " + " ".join(sys.argv[1:]),
        "config": asdict(config),
        "init": _earlier_record(args.init),
        "corpus": {"chunks": sorted(chunks), "sequences": sum(len(c.rows) for c in chunks.values()),
                   "positions": sum(len(r.tokens) for c in chunks.values() for r in c.rows), "generated": generated},
        "vocab": {"size": len(vocab_ids), "chunks": sorted(vocab_chunks) if args.init is None else "from --init",
                  "coverage": vocabulary_coverage(chunks, vocab_ids, target.config.vocab_size)},
        "train_minutes": round(minutes, 1),
        "kept_step": kept,
        "heldout": best["heldout"],
        "log": log[:-1],
    }
    (Path(args.out) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"kept step {kept}: held-out agreement " + " / ".join(f"{a:.3f}" for a in best["heldout"])
          + f" (draft 1 / 2 / ...) after {minutes:.0f} min -> {args.out}", file=sys.stderr)


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
