"""Chapter 03: speculative sampling's acceptance rate."""

from __future__ import annotations

from typing import Callable

import torch

from ..loop.sampling import acceptance_probability
from .core import Mismatch, as_number, exercise, learner_code


def distribution_cases(seed: int = 303, vocab: int = 12) -> list[tuple[str, torch.Tensor, torch.Tensor, str]]:
    """(name, p, q, hint) pairs the chapter doesn't show, the edge cases among them."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(vocab, generator=gen) * 2, -1)
    q = torch.softmax(torch.randn(vocab, generator=gen) * 2, -1)
    left, right = torch.zeros(vocab), torch.zeros(vocab)
    left[: vocab // 2], right[vocab // 2 :] = 2 / vocab, 2 / vocab
    return [
        ("two random distributions", p, q, "1 − TV(p, q) = Σₓ min(p(x), q(x)); TV is half the L1 distance"),
        ("p equal to q", p, p.clone(), "a draft that matches the target exactly always passes"),
        ("p and q on disjoint tokens", left, right, "a draft that proposes only tokens the target never picks never passes"),
        ("q one-hot on a token", p, torch.nn.functional.one_hot(p.argmax(), vocab).float(),
         "with a one-hot q the draft token passes with chance p(x) of that token"),
    ]


@exercise("03.2", "your one_minus_tv(p, q): the chance a draft token x ~ q passes", 'check("03.2", one_minus_tv)')
def check_one_minus_tv(one_minus_tv: Callable[[torch.Tensor, torch.Tensor], float]) -> str:
    """The learner's 1 − TV(p, q) against the library's acceptance_probability on four hidden pairs."""
    cases = distribution_cases()
    for name, p, q, hint in cases:
        got = learner_code(f"on '{name}', one_minus_tv", lambda: one_minus_tv(p.clone(), q.clone()))
        got = as_number(got, f"on '{name}', what one_minus_tv returned", "return one number")
        if abs(got - float(acceptance_probability(p, q))) > 1e-5:
            raise Mismatch(f"on '{name}', one_minus_tv returned {got:.4f}", hint)
    return f"your 1 − TV agrees with the library's acceptance_probability on {len(cases)} hidden pairs"
