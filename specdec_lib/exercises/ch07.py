"""Chapter 07: a hybrid drafter, prompt lookup first and the draft model when lookup finds nothing."""

from __future__ import annotations

from typing import Any

import torch

from ..drafters.model import ModelDrafter
from ..drafters.prompt_lookup import PromptLookupDrafter
from ..loop import Drafter, Sampler, autoregressive_generate, speculative_generate
from ..testing import tiny_pair
from .core import Mismatch, exercise, learner_code

HINT_UPDATE = ("pass start(...) and update(seq, record, verified) on to the ModelDrafter after every step, lookup steps "
               "included, so its cache forgets the rejected drafts")
HINT_PROTOCOL = "subclass specdec_lib.loop.DrafterBase and give it start, propose and update (chapter 07, 7.4)"


def started(drafter: Any, target: torch.nn.Module, prompt: torch.Tensor, what: str) -> Any:
    """The drafter after start(target, prompt), as the loop calls it."""
    learner_code(f"{what}.start", lambda: drafter.start(target, prompt))
    return drafter


def proposed(drafter: Any, seq: torch.Tensor, k: int, what: str) -> list[int]:
    """The tokens a drafter proposes after seq, greedy, as a list."""
    proposal = learner_code(f"{what}.propose", lambda: drafter.propose(seq, k, Sampler()))
    tokens = getattr(proposal, "tokens", None)
    if not isinstance(tokens, torch.Tensor):
        raise Mismatch(f"{what}.propose returned {type(proposal).__name__}, not a Proposal",
                       "return the Proposal that PromptLookupDrafter or ModelDrafter gives")
    return tokens.view(-1).tolist()


@exercise("07.2", "your HybridDrafter class, built as HybridDrafter(draft_model)", 'check("07.2", HybridDrafter)')
def check_hybrid(hybrid_class: type) -> str:
    """Routing (lookup when it matches, the draft model otherwise) and exact greedy output, on a tiny random pair."""
    target, draft = tiny_pair("llama", noise=0.3, seed=7)
    make = lambda: learner_code("HybridDrafter(draft)", lambda: hybrid_class(draft))  # noqa: E731
    if not isinstance(make(), Drafter):
        raise Mismatch("a HybridDrafter is not a drafter the loop can use", HINT_PROTOCOL)
    gen = torch.Generator().manual_seed(77)
    fresh = torch.randperm(60, generator=gen)[:12].view(1, -1) + 1  # 12 distinct tokens: nothing to look up
    repeated = torch.cat([fresh, fresh[:, :5]], dim=1)  # ends with an n-gram seen before
    k = 4
    lookup = proposed(PromptLookupDrafter(), repeated, k, "PromptLookupDrafter")
    if proposed(started(make(), target, repeated, "HybridDrafter"), repeated, k, "HybridDrafter") != lookup:
        raise Mismatch("where the text repeats an earlier n-gram, HybridDrafter did not propose the lookup's tokens",
                       "ask the PromptLookupDrafter first; use its proposal whenever it holds any token")
    model = proposed(started(ModelDrafter(draft), target, fresh, "ModelDrafter"), fresh, k, "ModelDrafter")
    if proposed(started(make(), target, fresh, "HybridDrafter"), fresh, k, "HybridDrafter") != model:
        raise Mismatch("where nothing repeats, HybridDrafter did not propose the draft model's tokens",
                       "when the lookup's proposal is empty (tokens.numel() == 0), ask a ModelDrafter(draft)")
    for prompt in (repeated, fresh):
        expected = autoregressive_generate(target, prompt, max_new_tokens=40)
        try:
            got = learner_code("speculative_generate with HybridDrafter",
                               lambda: speculative_generate(target, make(), prompt, max_new_tokens=40, k=k).sequences)
        except Mismatch as error:  # most often the draft's cache still holding rejected drafts
            raise Mismatch(error.what, HINT_UPDATE) from None
        if not torch.equal(got, expected):
            raise Mismatch("speculative_generate with HybridDrafter gave text other than the target's greedy text",
                           HINT_UPDATE)
    return "lookup when the text repeats, the draft model otherwise, and the target's exact greedy text on 2 hidden prompts"
