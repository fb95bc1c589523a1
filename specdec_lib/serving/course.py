"""The course's own loop on the same prompts as a vLLM run, reported in the same shape (run in the course's venv).

Method by method: none -> the target alone; ngram -> chapter 07's prompt lookup; draft -> chapter 06's
trained draft; eagle -> chapter 08's EAGLE-3 head (the head exported to vLLM). One prompt at a time,
greedy, no stop at end-of-text, tokenised as `tokenizer(prompt).input_ids`, like `engine.run`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..drafters import PROMPT_LOOKUP, Drafter, as_drafter
from ..loop import autoregressive_generate, speculative_generate
from ..loop.timer import stopwatch
from ..models import EAGLE3_DRAFT, TRAINED_DRAFT, smollm2_draft
from ..models.cpu_kernels import fast_on_cpu, uses_small_batch_linear
from .layout import METHODS

COURSE_DRAFT = {"ngram": PROMPT_LOOKUP, "draft": TRAINED_DRAFT, "eagle": EAGLE3_DRAFT}


def accepted_per_position(accepted: Sequence[int], k: int) -> list[int]:
    """Entry i: how many steps accepted draft position i (vLLM's `num_accepted_tokens_per_pos`)."""
    return [sum(1 for a in accepted if a > i) for i in range(k)]


def course_run(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, method: str, k: int,
               prompts: Sequence[str], max_tokens: int, draft: PreTrainedModel | Drafter | None = None) -> dict:
    """Every prompt through the course's loop with `method`: token ids, tokens/s and acceptance as vLLM counts it.

    The draft is the SmolLM2 one COURSE_DRAFT names, unless `draft` gives another (any target: tests use tiny ones)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "none":
        draft = None
    elif draft is None:
        draft = smollm2_draft(target, COURSE_DRAFT[method])[0]
        model = as_drafter(draft).model  # prompt lookup has none
        if isinstance(model, torch.nn.Module) and uses_small_batch_linear(target):
            fast_on_cpu(model)  # the target runs on load_pair's CPU kernels: its draft should too
    token_ids, proposed, accepted, seconds = [], [], [], 0.0
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt).input_ids], device=target.device)
        if draft is None:
            took, sequences = stopwatch(lambda: autoregressive_generate(target, ids, max_new_tokens=max_tokens), target.device)
        else:
            took, out = stopwatch(lambda: speculative_generate(target, draft, ids, max_new_tokens=max_tokens, k=k),
                                  target.device)
            proposed += out.stats.proposed
            accepted += out.stats.accepted
            sequences = out.sequences
        seconds += took
        token_ids.append(sequences[0, ids.shape[1]:].tolist())
    acceptance = {"drafts": sum(1 for p in proposed if p), "draft_tokens": sum(proposed), "accepted": sum(accepted),
                  "per_position": accepted_per_position(accepted, k) if draft is not None else []}
    return {"method": method, "k": k if draft is not None else 0, "batch": 1, "max_tokens": max_tokens,
            "token_ids": token_ids, "seconds": seconds, "tokens_per_s": sum(map(len, token_ids)) / seconds,
            "acceptance": acceptance}

