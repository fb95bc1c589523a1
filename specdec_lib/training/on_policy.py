"""Chapter 08: one on-policy round for the standalone draft (DistillSpec, Zhou et al. 2023).

Chapter 06 trained the draft on the *target's* text. In the loop, though, the draft continues its
own guesses, and its mistakes lead it into text the target would not have written. On-policy data
is the draft's own continuations, each token relabelled with the target's top-k logits: the draft
learns what the target would have said exactly where the draft itself goes astray.

    python -m specdec_lib.training onpolicy --out onpolicy.pt          # the draft writes, the target labels
    python -m specdec_lib.training train --init specdec_lib/assets/smollm2_draft \\
        --data data.pt,onpolicy.pt --steps 600 --lr 3e-4 --out my_draft   # mixed with the target's own text
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .corpus import Sample, continuation_rows, encode_left_padded, plan_prompts


@torch.no_grad()
def draft_continuations(
    draft: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], *, greedy: bool,
    max_new_tokens: int, temperature: float, max_prompt_tokens: int,
) -> list[tuple[torch.Tensor, int]]:
    """(prompt + the draft's continuation, prompt length) per text, generated in one left-padded batch."""
    enc = encode_left_padded(tokenizer, texts, max_prompt_tokens, draft.device)
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = draft.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    return continuation_rows(enc, out, tokenizer.eos_token_id)


@torch.no_grad()
def relabel(target: PreTrainedModel, rows: list[tuple[torch.Tensor, int]], top_k: int = 32) -> list[Sample]:
    """The target's top-k logits for every continuation token of each (tokens, n_prompt), in one right-padded pass."""
    length = max(len(tokens) for tokens, _ in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (tokens, _) in enumerate(rows):
        ids[i, : len(tokens)], mask[i, : len(tokens)] = tokens, 1
    # Right padding: a causal model's logits at real positions never see the padding after them.
    logits = target(input_ids=ids.to(target.device), attention_mask=mask.to(target.device)).logits
    samples = []
    for i, (tokens, n_prompt) in enumerate(rows):
        top = logits[i, n_prompt - 1 : len(tokens) - 1].float().topk(top_k, dim=-1)  # row j predicts token n_prompt + j
        samples.append(Sample(tokens, n_prompt, top.values.half().cpu(), top.indices.cpu()))
    return samples


def on_policy_corpus(
    target: PreTrainedModel, draft: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
    batch_size: int = 32, max_new_tokens: int = 96, greedy_share: float = 0.5, temperature: float = 0.8,
    top_k: int = 32, max_prompt_tokens: int = 96, seed: int = 0, progress: bool = True,
) -> list[Sample]:
    """The draft's continuations of the prompts (planned as chapter 06's corpus), labelled by the target."""
    torch.manual_seed(seed)
    plan = plan_prompts(prompts, tokenizer, greedy_share, seed)
    samples: list[Sample] = []
    bar = tqdm(total=len(plan), desc="draft writes, target labels", unit="seq", disable=not progress)
    for start in range(0, len(plan), batch_size):
        batch = plan[start : start + batch_size]
        for greedy in (True, False):
            texts = [text for text, g in batch if g == greedy]
            if texts:
                rows = draft_continuations(draft, tokenizer, texts, greedy=greedy, max_new_tokens=max_new_tokens,
                                           temperature=temperature, max_prompt_tokens=max_prompt_tokens)
                samples += relabel(target, rows, top_k)
        bar.update(len(batch))
        bar.set_postfix(tokens=sum(len(s.topk_ids) for s in samples))
    bar.close()
    return samples
