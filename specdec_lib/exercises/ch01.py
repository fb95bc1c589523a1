"""Chapter 01: greedy verification of one step."""

from __future__ import annotations

from typing import Callable

import torch

from ..loop.greedy import greedy_verify
from .core import Mismatch, exercise, learner_code


def verify_cases(seed: int = 101, vocab: int = 50) -> list[tuple[str, torch.Tensor, torch.Tensor, str]]:
    """(name, draft tokens, target logits, hint) for cases the chapter doesn't show, the 01.4 trap among them."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for k, name, hint in (
        (4, "every draft matches", "when all K drafts match, the target still gives one more token: the row after the last draft"),
        (3, "the first draft is wrong", "the target rejects the first draft: no later draft can pass after a rejected one, whatever it is"),
        (5, "draft 2 is wrong but drafts 3-5 match again", "stop at the first mismatch: later drafts were proposed after a wrong token"),
        (1, "one draft, which matches", "with K = 1 a match gives 2 tokens from one call"),
        (0, "no drafts at all (K = 0)", "with nothing drafted, the call still gives the target's own next token"),
    ):
        logits = torch.randn(k + 1, vocab, generator=gen)
        drafts = logits[:k].argmax(-1).clone()
        if name.startswith("the first"):
            drafts[0] = (drafts[0] + 1) % vocab
        elif name.startswith("draft 2"):
            drafts[1] = (drafts[1] + 7) % vocab
        cases.append((name, drafts, logits, hint))
    return cases


def as_pair(result: object) -> tuple[int, int]:
    """A (n_accepted, next_token) answer as two ints, from ints or 0-d tensors."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Mismatch(f"verify returned {result!r}", "return a pair: (n_accepted, next_token)")
    try:
        return int(result[0]), int(result[1])
    except (TypeError, ValueError, RuntimeError):
        raise Mismatch(f"verify returned {result!r}", "both items must be whole numbers (an int, or a 0-d tensor)") from None


@exercise("01.5", "your verify(draft_tokens, target_logits) -> (n_accepted, next_token)", 'check("01.5", verify)')
def check_verify(verify: Callable[[torch.Tensor, torch.Tensor], tuple[int, int]]) -> str:
    """The learner's greedy verify against the library's on five hidden cases."""
    cases = verify_cases()
    for name, drafts, logits, hint in cases:
        got = as_pair(learner_code(f"on the case '{name}', verify", lambda: verify(drafts.clone(), logits.clone())))
        if got != greedy_verify(drafts, logits):
            raise Mismatch(f"on the case '{name}', verify returned {got}", hint)
    return f"your verify agrees with the library's greedy_verify on {len(cases)} hidden cases"
