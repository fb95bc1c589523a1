"""Chapter 08: the attention mask of EAGLE-3's training-time test."""

from __future__ import annotations

from typing import Callable

import torch

from ..models.eagle3_head import unrolled_mask
from .core import Mismatch, exercise, learner_code


@exercise("08.4", "your unrolled_mask(length, steps): which keys each query of the unrolled pass may read",
          'check("08.4", unrolled_mask)')
def check_unrolled_mask(mask_fn: Callable[[int, int], torch.Tensor]) -> str:
    """The learner's (steps·L, steps·L) bool mask against the library's, at sizes the chapter doesn't draw."""
    sizes = [(5, 1), (4, 3), (7, 2), (3, 5)]
    for length, steps in sizes:
        got = learner_code(f"unrolled_mask({length}, {steps})", lambda: mask_fn(length, steps))
        got = torch.as_tensor(got)
        n = length * steps
        if got.shape != (n, n):
            raise Mismatch(f"unrolled_mask({length}, {steps}) has shape {tuple(got.shape)}",
                           "one row per query and one column per key, step-major: (steps × length, steps × length)")
        wrong = (got.bool() != unrolled_mask(length, steps)).nonzero()
        if len(wrong):
            query, key = (int(x) for x in wrong[0])
            says = "may read" if got.bool()[query, key] else "may not read"
            raise Mismatch(f"in unrolled_mask({length}, {steps}) your mask says query (step {query // length}, "
                           f"position {query % length}) {says} key (step {key // length}, position {key % length}); "
                           f"{len(wrong)} entries differ",
                           "step 0's keys are the true context (causal); a later step's query adds only its own "
                           "earlier drafts, at its own position")
    return f"your mask agrees with Eagle3Head's at {len(sizes)} hidden sizes"
