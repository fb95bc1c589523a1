"""Chapters 06 and 08: how well a draft predicts the target, on prompts it was never trained on.

- held-out continuations: the target's greedy text after each held-out prompt (`held_out_set`)
- agreement: how often a draft model's argmax (`greedy_agreement`), or an EAGLE head's first and
  second draft (`eagle_agreement`, on the target's features), is the target's greedy token
- `score_draft`: agreement and c, the numbers the speedup formula needs
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm, trange
from transformers import PreTrainedModel

from ..bench.runs import draft_model
from ..bench.timing import measure_cost_ratio
from ..drafters import EagleDrafter
from ..loop.drafter import Drafter
from ..loop.generate import autoregressive_generate
from ..loop.kv_cache import pick_hidden
from ..models.cpu_kernels import use_small_batch_linear
from ..models.eagle3_head import Eagle3Head
from ..models.eagle_head import EagleHead
from ..prompts import HELDOUT_PROMPTS


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


def cached_held_out(target: PreTrainedModel, tokenizer, corpus_path: str | Path) -> HeldOut:
    """The held-out continuations, generated once and cached beside the corpus file."""
    held_path = Path(corpus_path).with_suffix(".heldout.pt")
    if held_path.exists():
        return HeldOut(**torch.load(held_path))
    held_out = held_out_set(target, tokenizer, HELDOUT_PROMPTS)
    torch.save(held_out.__dict__, held_path)
    return held_out



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


TOP_K = 32  # label logits kept per position, as chapter 06's corpus keeps


@torch.inference_mode()
def target_states(
    target: PreTrainedModel, sequences: Sequence[torch.Tensor], layers: Sequence[int], batch_tokens: int = 8192
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(index, the chosen layers' states (L, 3d), top-k logits (L, TOP_K), their ids (L, TOP_K)) per sequence,
    teacher-forced, in batches of similar length (right-padded: padding comes after a row's tokens, so it changes nothing)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    start = 0
    while start < len(order):
        width = len(sequences[order[start]])
        rows = []
        while start < len(order) and (len(rows) + 1) * max(width, len(sequences[order[start]])) <= max(batch_tokens, width):
            width = max(width, len(sequences[order[start]]))
            rows.append(order[start])
            start += 1
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(sequences[i])], mask[r, : len(sequences[i])] = sequences[i], 1
        out = target.model(input_ids=ids.to(target.device), attention_mask=mask.to(target.device), output_hidden_states=True)
        aux, final = pick_hidden(out.hidden_states, layers), out.last_hidden_state
        for r, i in enumerate(rows):
            tops = [target.lm_head(part).topk(TOP_K, dim=-1) for part in final[r, : len(sequences[i])].split(1024)]
            yield i, aux[r, : len(sequences[i])], torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops])


def heldout_states(target: PreTrainedModel, sequences: Sequence[torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
    """The fused-layer states of held-out sequences, one (L, 3d) float32 tensor each."""
    out: list[torch.Tensor | None] = [None] * len(sequences)
    for i, aux, *_ in target_states(target, sequences, layers):
        out[i] = aux.float().cpu()
    return out  # type: ignore[return-value]


@torch.inference_mode()
def eagle3_agreement(
    head: Eagle3Head, tokens: Sequence[torch.Tensor], features: Sequence[torch.Tensor], first: Sequence[int], steps: int,
) -> list[float]:
    """Greedy agreement of draft step i (i = 0: a step's 1st draft) with the sequences, teacher-forced, over
    tokens[first:]: features (L, 3d) are the target's chosen states; the sequences are the target's greedy text."""
    hits, total = [0] * steps, [0] * steps
    for seq, aux, n in zip(tokens, features, first):
        hiddens = head.unrolled(head.fuse(aux[None].to(head.device)), seq[None].to(head.device), steps)
        for i, hidden in enumerate(hiddens):
            j = torch.arange(len(seq))
            scored = (j + 2 + i < len(seq)) & (j + 2 + i >= n)
            guess = head.vocab_ids[head.sub_logits(hidden[0]).argmax(-1)].cpu()
            truth = F.pad(seq, (0, 2 + i))[2 + i :][: len(seq)]
            hits[i] += int((guess == truth)[scored].sum())
            total[i] += int(scored.sum())
    return [h / t if t else math.nan for h, t in zip(hits, total)]


def score_draft(target: PreTrainedModel, draft: PreTrainedModel | Drafter, held_out: HeldOut) -> tuple[float, float]:
    """(held-out greedy agreement, c) of a draft model or a drafter's model, timed with load_pair's CPU kernels.

    An EAGLE head scores its step's 1st draft, which reads the target's true features (an EAGLE-3 head's,
    its fused low, middle and high layers).
    """
    model = draft_model(draft)
    if model is None:
        raise ValueError(f"{type(draft).__name__} runs no model: there is no agreement or c to score")
    use_small_batch_linear(model)
    if isinstance(model, Eagle3Head):
        states = heldout_states(target, held_out.sequences, model.target_layers)
        alpha = eagle3_agreement(model, held_out.sequences, states, held_out.n_prompt, steps=1)[0]
    elif isinstance(draft, EagleDrafter):
        features = target_features(target, held_out.sequences, progress=False)
        alpha = eagle_agreement(model, held_out.sequences, features, held_out.n_prompt)[0]
    else:
        alpha = greedy_agreement(model, held_out)
    seq, n = held_out.sequences[0][None], held_out.n_prompt[0]
    return alpha, measure_cost_ratio(target, model, seq, at_lengths=[n, seq.shape[1] - 1])
