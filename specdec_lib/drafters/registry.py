"""Drafts by name: `load_pair(draft=NAME)`, `bench --draft NAME` and `training eval --drafts NAME` all look here.

A new kind of draft registers itself in its own file, so no other file of the library needs an
edit to reach it:

    register_draft("copycat", lambda target: CopycatDrafter(), "copies the prompt")

Each entry builds the draft from the loaded target (a `Drafter`, or a draft model that the loop
wraps in a `ModelDrafter`). transformers' counterpart of a draft, when it has one, is the
drafter's own `transformers_counterpart`, so the benchmark times it without knowing its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from transformers import PreTrainedModel

from ..loop.drafter import Drafter


@dataclass(frozen=True)
class DraftKind:
    """A registered draft: its name, how to build it from the target, a label, and the presets it is made for."""

    name: str
    build: Callable[[PreTrainedModel], Drafter | nn.Module]
    about: str | Callable[[Drafter | nn.Module], str]  # how the pair's name describes it, or a function of the built draft
    presets: tuple[str, ...] | None = None  # None: any target; else only these presets (e.g. weights trained for SmolLM2)

    def label(self, draft: Drafter | nn.Module) -> str:
        """How a pair's name describes the draft built, e.g. "prompt lookup (no draft model)"."""
        return self.about(draft) if callable(self.about) else self.about

    def fits(self, preset: str | None) -> bool:
        """Whether this draft can serve `preset` (None: a target given by name or path)."""
        return self.presets is None or preset in self.presets


DRAFTS: dict[str, DraftKind] = {}


def register_draft(
    name: str, build: Callable[[PreTrainedModel], Drafter | nn.Module], about: str | Callable[[Drafter | nn.Module], str],
    presets: tuple[str, ...] | None = None,
) -> DraftKind:
    """Make `name` a draft that load_pair, the bench and training eval find; a later registration replaces an earlier one."""
    if not isinstance(name, str) or not name or "," in name:
        raise ValueError(f"a draft's name must be a non-empty string without commas, got {name!r}")
    kind = DraftKind(name, build, about, None if presets is None else tuple(presets))
    DRAFTS[name] = kind
    return kind


def draft_kind(name: str) -> DraftKind | None:
    """The registered draft called `name`, or None."""
    return DRAFTS.get(name)


def draft_names(preset: str | None = None) -> list[str]:
    """The names of the drafts registered for `preset` (None: those that fit any target)."""
    return [name for name, kind in DRAFTS.items() if kind.fits(preset)]
