"""Chapter 06: train a small draft for the embedded target by self-distillation.

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
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm, trange
from transformers import PreTrainedModel

from ..bench.runs import draft_model
from ..bench.theory import expected_speedup, optimal_k
from ..bench.timing import measure_cost_ratio
from ..loop.generate import autoregressive_generate
from ..bench.args import (
    device,
    existing_files,
    existing_folder,
    int_list,
    library_errors_to_usage,
    non_negative_int,
    positive_float,
    positive_int,
    writable_path,
)
from ..models import load_smollm2, pick_device, smollm2_draft
from ..drafters.eagle import EagleDrafter
from ..models.pairs import EAGLE_DRAFT, PROMPT_LOOKUP, TRAINED_DRAFT, is_saved_draft, stand_in_draft_check
from ..models.cpu_kernels import use_small_batch_linear
from .corpus import Sample, generate_corpus, load_corpus, save_corpus
from .draft_model import SMOLLM2_DRAFT_DIR, RestrictedVocabLlama, draft_from_target, load_draft, save_draft
from .prompts import HELDOUT_PROMPTS, training_prompts


def choose_vocab(samples: list[Sample], size: int) -> torch.Tensor:
    """The `size` ids that occur or are the target's first choice most often in the corpus, sorted."""
    counts = Counter()
    for s in samples:
        counts.update(s.tokens.tolist())
        counts.update(s.topk_ids[:, 0].tolist())
    return torch.tensor(sorted(i for i, _ in counts.most_common(size)))


def vocab_coverage(samples: list[Sample], vocab_ids: torch.Tensor) -> float:
    """Share of the target's top-1 predictions in the corpus that the restricted vocabulary contains."""
    top1 = torch.cat([s.topk_ids[:, 0] for s in samples])
    return torch.isin(top1, vocab_ids).float().mean().item()


@dataclass
class Batch:
    """Right-padded token ids and, at every position, the target's top-k next-token targets in draft ids."""

    tokens: torch.Tensor  # (B, L)
    target_ids: torch.Tensor  # (B, L, k) draft-vocabulary ids, 0 where unused
    target_probs: torch.Tensor  # (B, L, k) target probabilities (0 where unused or outside the draft's vocabulary)


def make_batch(samples: list[Sample], to_draft: torch.Tensor) -> Batch:
    """Pad samples into one batch; position t learns the target's distribution for token t + 1."""
    length = max(len(s.tokens) for s in samples)
    k = max(s.topk_ids.shape[1] for s in samples)  # corpora may keep different top-k (top-1: hard labels)
    tokens = torch.zeros(len(samples), length, dtype=torch.long)
    ids = torch.zeros(len(samples), length, k, dtype=torch.long)
    probs = torch.zeros(len(samples), length, k)
    for row, s in enumerate(samples):
        tokens[row, : len(s.tokens)] = s.tokens
        first, n, width = s.n_prompt - 1, len(s.topk_ids), s.topk_ids.shape[1]
        mapped = to_draft[s.topk_ids]
        ids[row, first : first + n, :width] = mapped.clamp(min=0)
        # Softmax over the top-k: the mass beyond it is small and unknown; ids outside the draft's
        # vocabulary keep weight 0, so the draft learns the target's distribution restricted to its ids.
        probs[row, first : first + n, :width] = torch.softmax(s.topk_values.float(), -1) * (mapped >= 0)
    return Batch(tokens, ids, probs)


def distill_loss(draft: RestrictedVocabLlama, batch: Batch) -> torch.Tensor:
    """Cross-entropy of the draft against the target's top-k distribution, per supervised position."""
    hidden = draft.model(input_ids=batch.tokens).last_hidden_state
    logq = torch.log_softmax(draft.sub_logits(hidden).float(), -1)
    picked = logq.gather(-1, batch.target_ids)
    positions = (batch.target_probs.sum(-1) > 0).sum().clamp(min=1)
    return -(picked * batch.target_probs).sum() / positions


@dataclass
class HeldOut:
    """The target's greedy continuations of held-out prompts: what a draft must predict at temperature 0."""

    sequences: list[torch.Tensor]  # (L,) each: prompt + continuation
    n_prompt: list[int]


@torch.inference_mode()
def held_out_set(
    target: PreTrainedModel, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64, progress: bool = True
) -> HeldOut:
    """Greedy continuations of each prompt, one at a time, exactly as the speculative loop would see them."""
    sequences, n_prompt = [], []
    for prompt in tqdm(prompts, desc="held-out continuations", leave=False, disable=not progress):
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(target.device)
        sequences.append(autoregressive_generate(target, ids, max_new_tokens=max_new_tokens)[0].cpu())
        n_prompt.append(ids.shape[1])
    return HeldOut(sequences, n_prompt)


@torch.inference_mode()
def greedy_agreement(draft: PreTrainedModel, held_out: HeldOut) -> float:
    """alpha at temperature 0: how often the draft's argmax is the target's greedy token, teacher-forced."""
    hits = total = 0
    for seq, n in zip(held_out.sequences, held_out.n_prompt):
        logits = draft(input_ids=seq[None].to(draft.device)).logits[0, n - 1 : -1]
        hits += int((logits.argmax(-1).cpu() == seq[n:]).sum())
        total += len(seq) - n
    return hits / total


@dataclass
class TrainConfig:
    """Everything that determines a training run."""

    layers: tuple[int, ...] = (0, 1)
    vocab_size: int = 8192
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 30
    eval_every: int = 100
    seed: int = 0


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak (any config with lr, warmup and steps)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], loss: torch.Tensor, lr: float) -> None:
    """One update at learning rate lr: backward, gradients clipped to norm 1, step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def train(
    target: PreTrainedModel,
    samples: list[Sample],
    held_out: HeldOut,
    config: TrainConfig,
    progress: bool = True,
    init: RestrictedVocabLlama | None = None,
) -> tuple[RestrictedVocabLlama, list[dict]]:
    """Distil a draft from the target on the samples; return it and the held-out agreement log.

    The draft starts from the target's `config.layers`, or, with `init`, goes on training that draft
    (its weights and vocabulary; `config.layers` and `config.vocab_size` are then unused).
    """
    torch.manual_seed(config.seed)
    vocab_ids = choose_vocab(samples, config.vocab_size) if init is None else init.vocab_ids.cpu()
    to_draft = torch.full((target.config.vocab_size,), -1, dtype=torch.long)
    to_draft[vocab_ids] = torch.arange(len(vocab_ids))
    draft = (draft_from_target(target, list(config.layers), vocab_ids) if init is None else init).train()
    draft.model.embed_tokens.weight.requires_grad_(False)  # shared with the target, not shipped
    params = [p for p in draft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = torch.Generator().manual_seed(config.seed)
    log = [{"step": 0, "agreement": greedy_agreement(draft.eval(), held_out)}]
    bar = trange(config.steps, desc="distilling", disable=not progress)
    for step in bar:
        draft.train()
        pick = torch.randint(len(samples), (config.batch_size,), generator=order).tolist()
        loss = distill_loss(draft, make_batch([samples[i] for i in pick], to_draft))
        optimizer_step(optimizer, params, loss, lr_at(step, config))
        bar.set_postfix(loss=f"{loss.item():.3f}", agreement=f"{log[-1]['agreement']:.3f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            log.append({"step": step + 1, "loss": loss.item(), "agreement": greedy_agreement(draft.eval(), held_out)})
            if progress:
                tqdm.write(f"step {step + 1}: loss {loss.item():.3f}, held-out greedy agreement {log[-1]['agreement']:.3f}")
    return draft.eval(), log


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
    from .on_policy import on_policy_corpus

    target, tokenizer = load_smollm2(pick_device(args.device), torch.float32)
    draft = load_draft(target, args.draft or SMOLLM2_DRAFT_DIR)
    prompts = training_prompts(seed=args.seed)[: args.max_prompts]
    samples = on_policy_corpus(target, draft, tokenizer, prompts, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, seed=args.seed)
    save_corpus(samples, args.out)
    n = sum(len(s.topk_ids) for s in samples)
    print(f"{len(samples)} draft continuations, {n} tokens labelled by the target -> {args.out}", file=sys.stderr)


def cached_held_out(target: PreTrainedModel, tokenizer, corpus_path: str | Path) -> HeldOut:
    """The held-out continuations, generated once and cached beside the corpus file."""
    held_path = Path(corpus_path).with_suffix(".heldout.pt")
    if held_path.exists():
        return HeldOut(**torch.load(held_path))
    held_out = held_out_set(target, tokenizer, HELDOUT_PROMPTS)
    torch.save(held_out.__dict__, held_path)
    return held_out


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
    seq, n = held_out.sequences[0][None], held_out.n_prompt[0]
    print(f"{len(HELDOUT_PROMPTS)} held-out prompts x {args.max_new_tokens} greedy tokens of the target")
    width = max(10, *(len(kind) + 2 for kind in args.drafts))  # folder names can be long
    print(f"{'draft':<{width}}{'agreement':>10}{'c':>7}{'best K':>8}{'predicted':>11}  about")
    for kind in args.drafts:
        draft, about = smollm2_draft(target, kind)
        model = draft_model(draft)  # the EAGLE drafter's head
        use_small_batch_linear(model)
        if isinstance(draft, EagleDrafter):  # a step's 1st draft, which reads the target's true features
            from .train_eagle import eagle_agreement, target_features

            features = target_features(target, held_out.sequences, progress=False)
            alpha = eagle_agreement(model, held_out.sequences, features, held_out.n_prompt)[0]
        else:
            alpha = greedy_agreement(draft, held_out)
        c = measure_cost_ratio(target, model, seq, at_lengths=[n, seq.shape[1] - 1])
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
    from .train_eagle import add_eagle_command  # it builds on this module's HeldOut

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
                       help="comma-separated draft names or folders written by train/eagle "
                       "(an EAGLE head: agreement of a step's 1st draft)")
    score.add_argument("--max-new-tokens", type=positive_int, default=64)
    score.set_defaults(run=_eval)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with library_errors_to_usage(parser):
        args.run(args)


def _draft_names(text: str) -> list[str]:
    """Comma-separated draft names of the SmolLM2 target: 'trained', 'eagle' or stand-ins that run on a CPU."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"takes comma-separated draft names, got {text!r}")
    for name in names:
        if name == PROMPT_LOOKUP:
            raise argparse.ArgumentTypeError("eval scores draft models; prompt lookup has none (use bench --draft prompt-lookup)")
        if name not in (TRAINED_DRAFT, EAGLE_DRAFT) and not is_saved_draft(name):  # a folder: a draft you trained
            try:
                stand_in_draft_check(name, torch.device("cpu"))
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
    return names


if __name__ == "__main__":
    main()
