"""Chapter 06: train a small draft for the embedded target by self-distillation: batches, the loss, the schedule, `train`.

Its evaluation is in `evaluate`; its command line (`python -m specdec_lib.training train ...`) in
`specdec_lib.cli.training`. The exact commands behind the shipped draft are in
specdec_lib/assets/smollm2_draft/README.md.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm, trange
from transformers import PreTrainedModel

from ..models.draft_model import RestrictedVocabLlama, draft_from_target
from .corpus import Sample
from .evaluate import HeldOut, greedy_agreement


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


def lr_at(step: int, config: TrainConfig, steps: int | None = None) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at `steps` (default config.steps; any config with lr and warmup)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, (config.steps if steps is None else steps) - config.warmup))
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


