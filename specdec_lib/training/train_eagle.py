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

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm, trange
from transformers import PreTrainedModel

from ..models.eagle_head import EagleHead
from .corpus import load_corpus
from .evaluate import HeldOut, eagle_agreement, target_features
from .train_draft import lr_at, optimizer_step


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


