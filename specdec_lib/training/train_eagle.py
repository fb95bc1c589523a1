"""Chapter 08: train an EAGLE head for the embedded target on the target's own features.

    python -m specdec_lib.training data  --out corpus.pt                      # as chapter 06 (~16 CPU-min)
    python -m specdec_lib.training eagle --data corpus.pt --out my_eagle     # features, then training

Data: the chapter-06 corpus (the target's continuations of varied prompts); the target's top hidden
state at every position is computed once, teacher-forced, and cached next to the corpus. Labels
need no storage: the target's next-token distribution is its head applied to the next feature.
The head starts as the shipped token-only draft with fc = [I | 0], so it begins at that draft's
agreement and training decides how much the features are worth; the checkpoint with the best
agreement on sequences held out of the corpus is kept (early stopping: features overfit fast).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm, trange
from transformers import PreTrainedModel

from ..bench.args import existing_files, existing_folder, non_negative_float, positive_float, positive_int, writable_path
from ..drafters.eagle import EagleHead, eagle_from_draft
from ..models import load_smollm2
from .draft_model import SMOLLM2_DRAFT_DIR, load_draft, save_draft
from .train_draft import HeldOut, cached_held_out, lr_at, optimizer_step


@torch.inference_mode()
def target_features(
    target: PreTrainedModel, sequences: Sequence[torch.Tensor], batch_size: int = 16, progress: bool = True
) -> list[torch.Tensor]:
    """The target's top hidden state (after its final norm) at every position of each sequence, (L, d) float16 on CPU."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths share a batch: little padding
    features: list[torch.Tensor | None] = [None] * len(sequences)
    for start in trange(0, len(order), batch_size, desc="target features", disable=not progress):
        rows = order[start : start + batch_size]
        length = max(len(sequences[i]) for i in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(sequences[i])], mask[r, : len(sequences[i])] = sequences[i], 1
        # The decoder stack only: the LM head over 49k ids is not needed for features.
        hidden = target.model(input_ids=ids.to(target.device), attention_mask=mask.to(target.device)).last_hidden_state
        for r, i in enumerate(rows):
            features[i] = hidden[r, : len(sequences[i])].half().cpu()
    return features


def label_rows(target: PreTrainedModel, head: EagleHead) -> torch.Tensor:
    """The target's LM-head rows of the head's vocabulary, (V_draft, d): its logits there are features @ rows.T."""
    return target.lm_head.weight[head.vocab_ids].detach().float()


def eagle_losses(
    head: EagleHead, rows: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor, lengths: torch.Tensor,
    *, feature_weight: float = 1.0, unroll: bool = True, noise: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """EAGLE's loss on a right-padded batch: soft cross-entropy to the target's next-token distribution + smooth-L1 on features.

    Position j reads (feature j, token j + 1) and predicts feature j + 1, hence token j + 2. With
    `unroll`, a second pass feeds each position the head's own (detached) prediction of its feature,
    as drafting does after the first token; `noise` adds uniform noise to the true input features (EAGLE).
    """
    f_in, x_next, f_next = features[:, :-1], tokens[:, 1:], features[:, 1:]
    valid = torch.arange(f_in.shape[1], device=tokens.device)[None] < (lengths[:, None] - 1)
    target_probs = torch.softmax(f_next @ rows.T, dim=-1)
    if noise:
        f_in = f_in + (torch.rand_like(f_in) * 2 - 1) * noise
    total, metrics = 0.0, {}
    inputs = f_in
    for name in ("true", "own")[: 2 if unroll else 1]:
        predicted, sub = head.features_forward(inputs, x_next)
        ce = -(target_probs * torch.log_softmax(sub.float(), -1)).sum(-1)[valid].mean()
        l1 = F.smooth_l1_loss(predicted.float(), f_next, reduction="none").mean(-1)[valid].mean()
        total = total + ce + feature_weight * l1
        metrics[f"ce_{name}"], metrics[f"l1_{name}"] = ce.item(), l1.item()
        # Next pass: position j reads the head's prediction of feature j (made at j - 1); j = 0 keeps the truth.
        inputs = torch.cat([f_in[:, :1], predicted[:, :-1].detach().float()], dim=1)
    return total, metrics


def _pad(tokens: Sequence[torch.Tensor], features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sequences and their features into (B, L), (B, L, d) float32 and lengths (B,)."""
    length = max(len(t) for t in tokens)
    ids = torch.zeros(len(tokens), length, dtype=torch.long)
    feats = torch.zeros(len(tokens), length, features[0].shape[-1])
    for r, (t, f) in enumerate(zip(tokens, features)):
        ids[r, : len(t)], feats[r, : len(t)] = t, f.float()
    return ids, feats, torch.tensor([len(t) for t in tokens])


@torch.inference_mode()
def eagle_agreement(
    head: EagleHead, tokens: Sequence[torch.Tensor], features: Sequence[torch.Tensor], first: Sequence[int]
) -> tuple[float, float]:
    """Greedy agreement with the target, teacher-forced, over tokens[first:] of each sequence: (1st draft, 2nd draft).

    The 1st draft of a step reads the target's true features up to the token before it, exactly as
    here; a 2nd draft reads the head's own prediction of the feature before it (the unrolled pass).
    """
    hits, total = [0, 0], 0
    for seq, feats, n in zip(tokens, features, first):
        n = max(n, 2)  # token t is predicted at position t - 2
        if len(seq) <= n:
            continue
        f, x = feats[None, :-1].float(), seq[None, 1:]
        inputs = f
        for i in range(2):
            predicted, sub = head.features_forward(inputs.to(head.device), x.to(head.device))
            guess = sub[0, n - 2 : -1].argmax(-1).cpu()  # the last position predicts a token past the end
            hits[i] += int((head.vocab_ids.cpu()[guess] == seq[n:]).sum())
            inputs = torch.cat([f[:, :1], predicted[:, :-1].float().cpu()], dim=1)
        total += len(seq) - n
    return hits[0] / total, hits[1] / total


@dataclass
class EagleConfig:
    """Everything that determines an EAGLE training run."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 30
    feature_weight: float = 1.0
    unroll: bool = True
    noise: float = 0.0
    eval_every: int = 100
    n_val: int = 64  # corpus sequences held out for early stopping
    seed: int = 0


@dataclass
class EagleData:
    """Training sequences with the target's features, and where each continuation starts."""

    tokens: list[torch.Tensor]
    features: list[torch.Tensor]
    n_prompt: list[int]


def train_eagle(
    target: PreTrainedModel,
    head: EagleHead,
    data: EagleData,
    config: EagleConfig,
    held_out: tuple[HeldOut, list[torch.Tensor]] | None = None,
    progress: bool = True,
) -> tuple[EagleHead, list[dict]]:
    """Train `head` (in place, then restored to its best checkpoint); return it and the agreement log."""
    if len(data.tokens) <= config.n_val:
        raise ValueError(f"the corpus has {len(data.tokens)} sequences; more than n_val={config.n_val} are needed")
    torch.manual_seed(config.seed)
    rows = label_rows(target, head)
    train_idx = list(range(len(data.tokens) - config.n_val))
    val = [i for i in range(len(data.tokens) - config.n_val, len(data.tokens))]
    head.model.embed_tokens.weight.requires_grad_(False)  # shared with the target, not shipped
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = torch.Generator().manual_seed(config.seed)

    def evaluate(step: int, **extra) -> dict:
        head.eval()
        entry = {"step": step, **extra}
        entry["val_1"], entry["val_2"] = eagle_agreement(
            head, [data.tokens[i] for i in val], [data.features[i] for i in val], [data.n_prompt[i] for i in val])
        if held_out is not None:
            entry["heldout_1"], entry["heldout_2"] = eagle_agreement(head, held_out[0].sequences, held_out[1], held_out[0].n_prompt)
        return entry

    log = [evaluate(0)]
    best = (log[0]["val_1"], copy.deepcopy(head.state_dict()))
    bar = trange(config.steps, desc="training the EAGLE head", disable=not progress)
    for step in bar:
        head.train()
        pick = [train_idx[i] for i in torch.randint(len(train_idx), (config.batch_size,), generator=order).tolist()]
        tokens, feats, lengths = _pad([data.tokens[i] for i in pick], [data.features[i] for i in pick])
        loss, metrics = eagle_losses(head, rows, tokens.to(head.device), feats.to(head.device), lengths.to(head.device),
                                     feature_weight=config.feature_weight, unroll=config.unroll, noise=config.noise)
        optimizer_step(optimizer, params, loss, lr_at(step, config))
        bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{log[-1]['val_1']:.3f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            log.append(evaluate(step + 1, loss=loss.item(), **metrics))
            if log[-1]["val_1"] > best[0]:
                best = (log[-1]["val_1"], copy.deepcopy(head.state_dict()))
            if progress:
                tqdm.write("step {step}: loss {loss:.3f}, agreement on held-aside corpus {val_1:.3f} / {val_2:.3f}".format(**log[-1])
                           + (", held-out prompts {heldout_1:.3f} / {heldout_2:.3f}".format(**log[-1]) if held_out else ""))
    head.load_state_dict(best[1])
    return head.eval(), log


def load_eagle_data(target: PreTrainedModel, paths: Sequence[str | Path], progress: bool = True) -> EagleData:
    """Corpus files from `data` plus the target's features, computed once and cached beside the first file."""
    from .corpus import load_corpus

    samples = [s for path in paths for s in load_corpus(path)]
    tokens = [s.tokens for s in samples]
    cache = Path(paths[0]).with_suffix(".features.pt")
    stored = torch.load(cache) if cache.exists() else None
    if stored is not None and stored["n"] == len(samples):
        features = stored["features"]
    else:
        features = target_features(target, tokens, progress=progress)
        torch.save({"n": len(samples), "features": features}, cache)
    return EagleData(tokens, features, [s.n_prompt for s in samples])


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
