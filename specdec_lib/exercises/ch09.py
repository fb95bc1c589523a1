"""Chapter 09: choosing a static tree's shape with the top-b formula."""

from __future__ import annotations

import itertools
from typing import Sequence

from ..bench.theory import expected_tree_tokens_per_step
from .core import Mismatch, exercise

MAX_NODES, MAX_DEPTH = 16, 4


def node_count(shape: Sequence[int]) -> int:
    """Nodes of a static tree in which every node of depth d has shape[d] children: the sum of the running products."""
    return sum(itertools.accumulate(shape, lambda a, b: a * b))


def tree_shapes(max_branching: int, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> list[tuple[int, ...]]:
    """Every branching tuple (guesses per node at each depth) with at most max_nodes nodes and max_depth depths."""
    shapes = []
    for depth in range(1, max_depth + 1):
        for shape in itertools.product(range(1, max_branching + 1), repeat=depth):
            if node_count(shape) <= max_nodes:
                shapes.append(shape)
    return shapes


@exercise("09.1", "the shape (at most 16 nodes, depth at most 4) with the most expected tokens per call for your top_b",
          'check("09.1", best_shape, top_b=top_b)')
def check_best_shape(shape: Sequence[int], *, top_b: Sequence[float]) -> str:
    """The learner's shape is allowed and no allowed shape has a higher expected tokens per call."""
    try:
        shape = tuple(int(b) for b in shape)
    except (TypeError, ValueError):
        raise Mismatch(f"{shape!r} is not a shape", "a shape is a tuple of guesses per depth, such as (2, 2, 1, 1)") from None
    if not shape or min(shape) < 1 or max(shape) > len(top_b):
        raise Mismatch(f"{shape} is not a shape with 1 to {len(top_b)} guesses per depth",
                       f"top_b has rates for up to {len(top_b)} guesses; the formula needs one per guess count")
    nodes = node_count(shape)
    if nodes > MAX_NODES or len(shape) > MAX_DEPTH:
        raise Mismatch(f"{shape} has {nodes} nodes and depth {len(shape)}",
                       f"the exercise allows at most {MAX_NODES} nodes (every node of a depth branches) and depth {MAX_DEPTH}")
    best = max(expected_tree_tokens_per_step(top_b, s) for s in tree_shapes(len(top_b)))
    value = expected_tree_tokens_per_step(top_b, shape)
    if value < best - 1e-9:
        raise Mismatch(f"{shape} expects {value:.3f} tokens per call, and an allowed shape expects more",
                       "enumerate every shape (itertools.product over 1..4 per depth), keep those within the limits, "
                       "and take the maximum of expected_tree_tokens_per_step")
    return f"{shape} expects {value:.3f} tokens per call, the most of any shape within {MAX_NODES} nodes and depth {MAX_DEPTH}"
