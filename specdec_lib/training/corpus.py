"""Chapter 06: self-distillation data: the target's own continuations and its top-k logits at every new token."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..prompts import CHAT_TEMPLATE_SHARE, as_chat


@dataclass
class Sample:
    """One training sequence: prompt + target continuation, and the target's top-k logits for each new token."""

    tokens: torch.Tensor  # (L,) int64: prompt, then the continuation
    n_prompt: int  # the continuation starts at this index
    topk_values: torch.Tensor  # (L - n_prompt, k) float16: the target's logits for tokens[n_prompt:]
    topk_ids: torch.Tensor  # (L - n_prompt, k) int64


def plan_prompts(prompts: list[str], tokenizer: PreTrainedTokenizerBase, greedy_share: float, seed: int) -> list[tuple[str, bool]]:
    """(text, greedy) per prompt: some wrapped in the chat template, some decoded greedily, the rest sampled."""
    rng = random.Random(seed)
    plan = []
    for prompt in prompts:
        text = as_chat(tokenizer, prompt) if rng.random() < CHAT_TEMPLATE_SHARE else prompt
        plan.append((text, rng.random() < greedy_share))
    return plan


def encode_left_padded(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_prompt_tokens: int, device) -> dict:
    """The texts as one batch padded on the left, so that every row's continuation starts at the same column."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens)
    finally:
        tokenizer.padding_side = side
    return enc.to(device)


def continuation_rows(enc, sequences: torch.Tensor, eos_token_id: int | None) -> list[tuple[torch.Tensor, int]]:
    """(prompt without its padding + new tokens up to and including the first EOS, prompt length) per row."""
    width, rows = enc["input_ids"].shape[1], []
    for row in range(sequences.shape[0]):
        prompt = enc["input_ids"][row][enc["attention_mask"][row].bool()]
        new = sequences[row, width:]
        ends = (new == eos_token_id).nonzero()
        n_new = int(ends[0]) + 1 if len(ends) else len(new)  # keep the end-of-text token, drop the padding after it
        rows.append((torch.cat([prompt, new[:n_new]]).cpu(), len(prompt)))
    return rows


@torch.no_grad()
def _generate_batch(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    greedy: bool,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    max_prompt_tokens: int,
) -> list[Sample]:
    """Generate continuations for one batch with the KV cache; keep each new token's top-k target logits."""
    enc = encode_left_padded(tokenizer, texts, max_prompt_tokens, target.device)
    # Pure temperature sampling, no top-k/top-p: the data should cover the target's whole distribution.
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = target.generate(
        **enc, max_new_tokens=max_new_tokens, output_logits=True, return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id, **sampling,
    )
    # Raw logits, before any sampling warper; top-k per step, so (B, N, V) never exists at once.
    tops = [step.float().topk(top_k, dim=-1) for step in out.logits]
    values, ids = torch.stack([t.values for t in tops], 1), torch.stack([t.indices for t in tops], 1)
    samples = []
    for row, (tokens, n_prompt) in enumerate(continuation_rows(enc, out.sequences, tokenizer.eos_token_id)):
        n_new = len(tokens) - n_prompt
        samples.append(Sample(tokens, n_prompt, values[row, :n_new].half().cpu(), ids[row, :n_new].cpu()))
    return samples


def generate_corpus(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    minutes: float,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    greedy_share: float = 0.5,
    temperature: float = 0.8,
    top_k: int = 32,
    max_prompt_tokens: int = 96,
    seed: int = 0,
    progress: bool = True,
) -> list[Sample]:
    """The target's continuations of the prompts, in batches, until the prompts or `minutes` run out."""
    torch.manual_seed(seed)
    plan = plan_prompts(prompts, tokenizer, greedy_share, seed)
    batches = [plan[i : i + batch_size] for i in range(0, len(plan), batch_size)]
    samples: list[Sample] = []
    deadline = time.monotonic() + 60 * minutes
    bar = tqdm(total=len(plan), desc="target generations", unit="seq", disable=not progress)
    for batch in batches:
        if time.monotonic() > deadline:
            break
        for greedy in (True, False):
            texts = [text for text, g in batch if g == greedy]
            if texts:
                samples += _generate_batch(
                    target, tokenizer, texts, greedy=greedy, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_k=top_k, max_prompt_tokens=max_prompt_tokens,
                )
        bar.update(len(batch))
        bar.set_postfix(tokens=sum(len(s.topk_ids) for s in samples))
    bar.close()
    return samples


def save_corpus(samples: list[Sample], path: str | Path) -> None:
    """Write samples to one torch file."""
    torch.save([s.__dict__ for s in samples], path)


def load_corpus(path: str | Path) -> list[Sample]:
    """Read samples written by save_corpus."""
    return [Sample(**d) for d in torch.load(path)]
