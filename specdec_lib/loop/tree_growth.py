"""Chapter 09: how a drafter fills a tree, depth by depth: to a fixed shape, or where it is confident (EAGLE-2).

Whatever the draft (a small model, an EAGLE head), growing a tree needs one thing from it,
`expand(tokens, fed, new)`: feed the last `new` nodes of the tree `fed` (its node tokens
`tokens`, breadth-first; the nodes before them were fed by earlier calls and are still cached)
and return the draft's logits after each of them, (new, V). One call per depth below the first.

- A **fixed** shape (`TokenTree.from_branching`) gives node i its parent's rank-th best guess.
- A **dynamic** tree (`DynamicTree`, Li et al. 2024, EAGLE-2) scores every guess by its path's
  probability under the draft (the product of the draft's probabilities along it), expands only
  the `top_k` best nodes of each depth, and finally verifies the best `budget` nodes of all it
  grew. With measured step costs it also picks how many of them to verify, and stops growing
  when another depth could not pay for its draft call.
Both only ever look at the draft, never at the target, so sampling on them stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .tree import TokenTree

# expand(tokens, fed, new) -> the draft's logits after each of the last `new` nodes of `fed`, (new, V).
Expand = Callable[[torch.Tensor, TokenTree, int], torch.Tensor]


class StepCostModel(Protocol):
    """What a dynamic tree needs to know of this machine (`specdec_lib.drafters.StepCosts` is one)."""

    draft: float  # one draft call, in single-token target calls

    def verify_cost(self, n: int) -> float:
        """One target call over n new tokens, in single-token target calls."""


@dataclass(frozen=True)
class DynamicTree:
    """EAGLE-2's settings: grow up to `depth` levels, expanding the `top_k` best nodes of each with `top_k` guesses, verify the best `budget`.

    The defaults suit a CPU, where every verified node costs (chapter 09's cost curve: 9 positions
    cost about 1.6 single-token calls): a small budget, spent where the draft is sure. EAGLE-2 on
    a GPU uses depth 6, top_k 10, budget 60. With `costs` (measured: `bench.measure_step_costs`) each step
    verifies only as many of the best nodes as pay for themselves, and grows no deeper than pays.
    """

    depth: int = 4
    top_k: int = 3
    budget: int = 8
    costs: StepCostModel | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("depth", "top_k", "budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DynamicTree's {name} must be an integer >= 1, got {value!r}")
        if self.costs is not None and not (hasattr(self.costs, "verify_cost") and hasattr(self.costs, "draft")):
            raise TypeError(f"costs must be a StepCosts (see specdec_lib.bench.measure_step_costs), got {type(self.costs).__name__}")

    @property
    def size(self) -> int:
        """The most nodes one step verifies."""
        return self.budget

    @property
    def positions(self) -> int:
        """The most positions one step adds to either model's cache: the nodes verified, or the draft's expanded ones."""
        return max(self.budget, (self.depth - 1) * self.top_k)

    def describe(self) -> dict:
        """The settings as JSON-ready values (whether step costs steered it, not the costs themselves)."""
        return {"dynamic": True, "depth": self.depth, "top_k": self.top_k, "budget": self.budget, "costs": self.costs is not None}

    def truncated(self, depth: int) -> "DynamicTree | None":
        """The same settings grown no deeper than `depth` (None when depth < 1), as near the end of a run."""
        if depth < 1:
            return None
        return self if depth >= self.depth else DynamicTree(depth, self.top_k, self.budget, self.costs)


@dataclass
class Candidates:
    """Every node a drafter grew in one step: token, parent (-1: the root), path probability under the draft, depth.

    `fed` lists the candidates fed to the draft (the expanded ones), in feeding order: a tree in itself.
    After selection, `chosen` lists those verified, in the tree's breadth-first order.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    chances: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    fed: list[int] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)

    def add(self, parent: int, tokens: list[int], probs: list[float]) -> list[int]:
        """Children of `parent` with these tokens and draft probabilities; their candidate indices."""
        above = 1.0 if parent < 0 else self.chances[parent]
        depth = 1 if parent < 0 else self.depths[parent] + 1
        start = len(self.tokens)
        for token, prob in zip(tokens, probs):
            self.tokens.append(token)
            self.parents.append(parent)
            self.chances.append(above * prob)
            self.depths.append(depth)
        return list(range(start, len(self.tokens)))

    def subtree(self, members: list[int]) -> TokenTree:
        """The tree of these candidates (each one's parent listed before it), parents renumbered into the list."""
        where = {c: i for i, c in enumerate(members)}
        return TokenTree(tuple(-1 if self.parents[c] < 0 else where[self.parents[c]] for c in members))

    def expected_tokens(self, members: list[int]) -> float:
        """Tokens a step verifying these candidates expects, by the draft's own probabilities: 1 + the sum of their chances."""
        return 1.0 + sum(self.chances[c] for c in members)


def _top(logits: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The k best tokens of each row of logits (n, V) and the draft's probabilities of them (softmax of its raw logits)."""
    probs, tokens = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return tokens.tolist(), probs.tolist()  # one host sync per depth


def grow_fixed(tree: TokenTree, root_logits: torch.Tensor, expand: Expand) -> Candidates:
    """Fill a fixed shape: node i is its parent's child_ranks[i]-th best guess; every node with children is fed once."""
    grown, ranks = Candidates(), tree.child_ranks()
    has_children = set(tree.parents)
    logits, row = root_logits.view(1, -1), {-1: 0}  # row[node]: its row in `logits`
    for d in range(1, tree.depth + 1):
        level = list(tree.level(d))
        tokens, probs = _top(logits, max(ranks[i] for i in level) + 1)
        for i in level:
            r = row[tree.parents[i]]
            grown.add(tree.parents[i], [tokens[r][ranks[i]]], [probs[r][ranks[i]]])  # candidate i is node i
        new = [i for i in level if i in has_children]
        if new:
            grown.fed += new
            logits = expand(torch.tensor([grown.tokens[c] for c in grown.fed]), grown.subtree(grown.fed), len(new))
            row = {node: r for r, node in enumerate(new)}
    grown.chosen = list(range(tree.size))
    return grown


def grow_dynamic(plan: DynamicTree, root_logits: torch.Tensor, expand: Expand) -> Candidates:
    """EAGLE-2: expand the top_k most likely nodes of each depth, then keep the best budget of every node grown."""
    grown = Candidates()
    tokens, probs = _top(root_logits.view(1, -1), plan.top_k)
    frontier = grown.add(-1, tokens[0], probs[0])
    for _ in range(plan.depth - 1):
        best = sorted(frontier, key=lambda c: -grown.chances[c])[: plan.top_k]
        if not _worth_growing(plan, grown, best):
            break
        grown.fed += best
        logits = expand(torch.tensor([grown.tokens[c] for c in grown.fed]), grown.subtree(grown.fed), len(best))
        tokens, probs = _top(logits, plan.top_k)
        frontier = [c for parent, t, p in zip(best, tokens, probs) for c in grown.add(parent, t, p)]
    grown.chosen = _breadth_first(grown, _select(plan, grown))
    return grown


def _ranked(grown: Candidates) -> list[int]:
    """Every candidate, most likely first; a node always after its parent (its chance is no higher, its depth is)."""
    return sorted(range(len(grown.tokens)), key=lambda c: (-grown.chances[c], grown.depths[c], c))


def _select(plan: DynamicTree, grown: Candidates) -> list[int]:
    """The candidates to verify: the `budget` most likely, or with costs the leading count with the most tokens per cost."""
    ranked = _ranked(grown)[: plan.budget]
    if plan.costs is None:
        return ranked
    calls = 1 + len(_depths_fed(grown))  # the draft calls this step made: the root's, then one per depth fed
    def goodput(m: int) -> float:
        return grown.expected_tokens(ranked[:m]) / (plan.costs.verify_cost(m + 1) + calls * plan.costs.draft)
    return ranked[: max(range(len(ranked) + 1), key=lambda m: (goodput(m), -m))]


def _depths_fed(grown: Candidates) -> set[int]:
    """The depths whose nodes were fed (one draft call each)."""
    return {grown.depths[c] for c in grown.fed}


def _worth_growing(plan: DynamicTree, grown: Candidates, best: list[int]) -> bool:
    """Without costs, always. With them: whether one more node as likely as the likeliest parent to expand (no child
    can be likelier) would pay for its verification and another draft call (a bound, as chapter 07's `worth_a_call`)."""
    if plan.costs is None:
        return True
    chosen, calls, costs = _select(plan, grown), 1 + len(_depths_fed(grown)), plan.costs
    expected = grown.expected_tokens(chosen)
    now = costs.verify_cost(len(chosen) + 1) + calls * costs.draft
    more = costs.verify_cost(len(chosen) + 2) + (calls + 1) * costs.draft
    return (expected + max(grown.chances[c] for c in best)) / more >= expected / now


def _breadth_first(grown: Candidates, chosen: list[int]) -> list[int]:
    """The chosen candidates as a tree's node order: depth by depth, siblings together, the likelier sibling first."""
    order: list[int] = []
    position = {-1: -1}
    for d in sorted({grown.depths[c] for c in chosen}):
        level = sorted((c for c in chosen if grown.depths[c] == d),
                       key=lambda c: (position[grown.parents[c]], -grown.chances[c], c))
        for c in level:
            position[c] = len(order)
            order.append(c)
    return order


def grow(shape: TokenTree | DynamicTree, root_logits: torch.Tensor, expand: Expand) -> tuple[torch.Tensor, TokenTree | None, Candidates]:
    """Grow a tree after the draft's root logits (V,): (node tokens (n,), the tree verified, every candidate grown)."""
    grown = grow_fixed(shape, root_logits, expand) if isinstance(shape, TokenTree) else grow_dynamic(shape, root_logits, expand)
    tokens = torch.tensor([grown.tokens[c] for c in grown.chosen], dtype=torch.long, device=root_logits.device)
    return tokens, (grown.subtree(grown.chosen) if grown.chosen else None), grown
