"""Chapter 09: token trees. Several guesses per position, all checked by the target in one call.

A tree is stored breadth-first: node i's parent is `parents[i]` (-1 for the root, which is the
last committed token), so every depth is a contiguous run of nodes and every prefix of whole
depths is a tree too. One forward pass scores every node at once: each node sits at position
(committed length - 1 + its depth) and, through a 4D attention mask, sees the committed text and
its own ancestors only, exactly what it would see in a chain (SpecInfer, Medusa, EAGLE-2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, StaticLayer

from .kv_cache import DynamicKV, ModelRunner
from .sampling import residual_distribution, sample


@dataclass(frozen=True)
class TokenTree:
    """The shape of a draft tree, breadth-first: `parents[i]` is node i's parent, -1 for the root."""

    parents: tuple[int, ...]

    def __post_init__(self):
        parents = tuple(self.parents)
        object.__setattr__(self, "parents", parents)
        if not parents:
            raise ValueError("a token tree needs at least one node")
        for i, p in enumerate(parents):
            if isinstance(p, bool) or not isinstance(p, int) or not -1 <= p < i:
                raise ValueError(f"node {i}'s parent must be -1 (the root) or an earlier node, got {p!r}")
        depths = self.depths
        if any(a > b for a, b in zip(depths, depths[1:])):
            raise ValueError(f"nodes must be listed depth by depth (breadth-first); depths are {list(depths)}")

    @classmethod
    def from_branching(cls, branching: Sequence[int]) -> "TokenTree":
        """A static tree: every node at depth d has branching[d] children (depth 0 is the root)."""
        branching = check_branching(branching)
        parents: list[int] = []
        level = [-1]
        for b in branching:
            start = len(parents)
            parents.extend(p for p in level for _ in range(b))
            level = list(range(start, len(parents)))
        return cls(tuple(parents))

    @classmethod
    @functools.lru_cache(maxsize=None)  # one shared tree per length: every chain step reuses it and its depths
    def chain(cls, k: int) -> "TokenTree":
        """A chain of k drafts as a tree of width 1: node i's parent is node i - 1."""
        return cls(tuple(range(-1, k - 1)))

    @cached_property
    def is_chain(self) -> bool:
        """Whether every node has one child at most, in order: a plain chain of drafts."""
        return self.parents == tuple(range(-1, self.size - 1))

    @cached_property
    def depths(self) -> tuple[int, ...]:
        """Each node's depth: 1 for the root's children."""
        depths: list[int] = []
        for p in self.parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        return tuple(depths)

    @property
    def size(self) -> int:
        """Number of nodes (the root not counted)."""
        return len(self.parents)

    @property
    def depth(self) -> int:
        """Length of the longest root-to-leaf path: the most tokens one step can accept before its bonus token."""
        return self.depths[-1]

    def level(self, d: int) -> range:
        """The node indices at depth d (contiguous, since nodes are breadth-first)."""
        return range(self.depths.index(d), len(self.depths) - self.depths[::-1].index(d))

    def truncated(self, depth: int) -> "TokenTree | None":
        """The tree cut below `depth` (None when depth < 1)."""
        n = sum(d <= depth for d in self.depths)
        return TokenTree(self.parents[:n]) if n else None

    def child_ranks(self) -> tuple[int, ...]:
        """Node i is its parent's child_ranks[i]-th child: the draft fills it with its rank-th best guess."""
        seen: dict[int, int] = {}
        ranks = []
        for p in self.parents:
            ranks.append(seen.get(p, 0))
            seen[p] = ranks[-1] + 1
        return tuple(ranks)

    def ancestors(self) -> torch.Tensor:
        """(size, size) bool: [i, j] is True when node j is node i or one of its ancestors."""
        anc = torch.eye(self.size, dtype=torch.bool)
        for i, p in enumerate(self.parents):
            if p >= 0:
                anc[i] |= anc[p]
        return anc

    def path_to(self, node: int) -> list[int]:
        """The nodes from the root's child down to `node`, in order."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]


def check_branching(branching: Sequence[int]) -> tuple[int, ...]:
    """Validate branching factors per depth, e.g. (2, 2, 1, 1); return them as a tuple of ints."""
    if isinstance(branching, (str, bytes)) or not isinstance(branching, Sequence) or not branching:
        raise ValueError(f"tree must be a non-empty sequence of branching factors per depth, e.g. (2, 2, 1, 1); got {branching!r}")
    for b in branching:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"every branching factor must be an integer >= 1, got {b!r} in {tuple(branching)}")
    return tuple(branching)


def allowed_attention(tree: TokenTree, committed: int, rows: int, columns: int, window: int | None = None) -> torch.Tensor:
    """(rows, columns) bool: which keys each fed position may attend to, for the sequence committed text + tree nodes.

    Rows are the last `rows` positions of that sequence (the tree nodes are its last `tree.size`; a
    draft growing a tree feeds only the newest), columns its last `columns` keys (a sliding-window cache layer holds fewer). Committed tokens are
    causal; a node sees all committed tokens and its ancestors; with a `window`, a query at
    position p sees keys at positions > p - window, positions counted as in the chain.
    """
    total = committed + tree.size
    r = torch.arange(total - rows, total)
    c = torch.arange(total - columns, total)
    allowed = c[None, :] <= r[:, None]  # causal by index; nodes come after every committed token
    # Among the nodes, a node sees its ancestors only. Fed rows may start after the first nodes (a
    # draft growing a tree feeds each depth's new nodes); columns hold every node but in a short window.
    n_rows, n_columns = min(rows, tree.size), min(columns, tree.size)
    allowed[-n_rows:, -n_columns:] = tree.ancestors()[-n_rows:, -n_columns:]
    if window is not None:
        positions = torch.cat([torch.arange(committed), committed - 1 + torch.tensor(tree.depths)])
        allowed &= (positions[r][:, None] - positions[c][None, :]) < window
    return allowed


def _additive(allowed: torch.Tensor, model: PreTrainedModel) -> torch.Tensor:
    """A bool mask as the (1, 1, q, kv) float mask transformers' eager and sdpa attention add to their scores."""
    dtype = model.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None].to(model.device)


def _attention_layers(model: PreTrainedModel, cache: Cache | None) -> dict[str, tuple[object, object]]:
    """Per attention type of the model (keyed by its name in config.layer_types): (how it attends, the cache layer).

    How it attends (sliding or not, how far) comes from a DynamicCache built from the config, since a
    static cache holds full-length layers for sliding ones too; the cache layer says how many keys it holds.
    """
    kinds = DynamicCache(config=model.config).layers
    layers = cache.layers if cache is not None else kinds
    names = getattr(model.config, "layer_types", None) or ["attention"] * len(layers)
    found: dict[str, tuple[object, object]] = {}
    for i, layer in enumerate(layers):
        if not hasattr(layer, "keys"):
            raise NotImplementedError(f"token trees need key/value cache layers; layer {i} is a {type(layer).__name__}")
        found.setdefault(names[i], (kinds[i], layer))
    return found


def tree_attention_inputs(
    model: PreTrainedModel, cache: Cache | None, committed: int, tree: TokenTree, cached: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
    """position_ids (1, q) and the 4D attention mask(s) for feeding committed text + tree nodes, all but the `cached` first.

    Usually the cache holds part of the committed text and every node is new; a draft growing a
    tree depth by depth (`tree_growth`) has its earlier nodes cached too, and feeds the newest only.

    A model with one attention type gets one mask; a hybrid (e.g. Qwen2 with some sliding-window
    layers) gets transformers' mapping from layer type to mask. A static cache's keys are its
    slots 0..capacity-1, slot j holding sequence index j: the slots after the tree are masked.
    """
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    if attention not in ("eager", "sdpa"):  # flash and flex kernels take no arbitrary 4D mask
        raise NotImplementedError(f"token trees need eager or sdpa attention, not {attention!r}: "
                                  "load the model with attn_implementation='sdpa'")
    static = cache is not None and all(isinstance(layer, StaticLayer) for layer in cache.layers)
    if cached is None:  # how many positions the cache holds (a runner knows it without a device sync)
        cached = 0 if cache is None else int(cache.get_seq_length())
    total = committed + tree.size
    rows = total - cached
    masks = {}
    for name, (kind, layer) in _attention_layers(model, cache).items():
        window = kind.sliding_window if getattr(kind, "is_sliding", False) else None
        if static:
            allowed = allowed_attention(tree, committed, rows, total, window)
            allowed = torch.nn.functional.pad(allowed, (0, layer.max_cache_len - total), value=False)
        else:
            columns = layer.get_mask_sizes(rows)[0] if cache is not None else total
            allowed = allowed_attention(tree, committed, rows, columns, window)
        masks[name] = _additive(allowed, model)
    depths = torch.tensor(tree.depths, device=model.device)
    # Every position of committed text + nodes; the cache may hold some nodes already (a draft growing a tree).
    positions = torch.cat([torch.arange(committed, device=model.device), committed - 1 + depths])[cached:]
    mask = next(iter(masks.values())) if len(masks) == 1 else masks
    return positions[None], mask


def tree_forward(
    runner: ModelRunner, seq: torch.Tensor, nodes: torch.Tensor, tree: TokenTree, keep: int, hidden: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass over seq (1, L) and the tree's node tokens (size,): logits of the last `keep` positions fed."""
    positions, mask = tree_attention_inputs(runner.model, runner.cache, seq.shape[1], tree, runner.cached_length)
    full = torch.cat([seq, nodes.view(1, -1).to(seq.device)], dim=1)
    return runner.forward(full, keep=keep, hidden=hidden, position_ids=positions, attention_mask=mask)


def greedy_tree_path(nodes: torch.Tensor, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """The longest root-to-node path whose every token is the target's argmax after its parent; plus the next token.

    logits (size + 1, V): row 0 is the target after the committed text, row i + 1 after node i.
    Returns the accepted node indices in order and the target's token after the last of them.
    """
    path, next_token, _ = greedy_tree_verdict(nodes, tree, logits)
    return path, next_token


def greedy_tree_verdict(nodes: torch.Tensor, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int, list[int]]:
    """`greedy_tree_path`, plus the node tokens as a list: all three from one host sync."""
    if logits.dim() != 2 or logits.shape[0] != tree.size + 1:
        raise ValueError(f"logits must have shape (size + 1, V) = ({tree.size + 1}, V), got {tuple(logits.shape)}")
    n = tree.size
    values = torch.cat([logits.argmax(dim=-1), nodes.to(logits.device).view(-1)]).tolist()  # the one host sync
    best, tokens = values[: n + 1], values[n + 1 :]
    path: list[int] = []
    node = -1
    while True:
        child = next((c for c in range(node + 1, n) if tree.parents[c] == node and tokens[c] == best[node + 1]), None)
        if child is None:
            return path, best[node + 1], tokens
        path.append(child)
        node = child


def after_rejection(residual: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution the next sibling is tested against once a draft from q failed: normalized max(0, residual - q)."""
    return residual_distribution(residual, q)


def sample_tree_verdict(
    nodes: torch.Tensor, tree: TokenTree, target_probs: torch.Tensor, draft_probs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[int], int, list[int]]:
    """Lossless sampling on a tree (SpecInfer's multi-draft rejection, EAGLE's `evaluate_posterior`): (path, next token, node tokens).

    Start at the root with r = the target's distribution there. Try its children in order: child c
    passes with probability min(1, r(x_c) / q_c(x_c)); if it does, move to c (r = the target's
    distribution after c) and go on; if not, r = normalized max(0, r - q_c) and try the next
    sibling. When no child passes, or a leaf is reached, the next token is drawn from r.
    `draft_probs[c]` is q_c, the distribution node c was drawn from given its earlier siblings;
    None means the tokens were chosen deterministically (top-k), q_c one-hot on x_c, so a failed
    sibling's token is simply struck out of r. Each stage is chapter 03's rejection step, which
    returns a token distributed as r: by induction from the last sibling up, every emitted token is
    distributed exactly as the target's own sample.
    target_probs (size + 1, V): row 0 after the committed text, row c + 1 after node c.
    """
    n = tree.size
    if target_probs.dim() != 2 or target_probs.shape[0] != n + 1:
        raise ValueError(f"target_probs must have shape (size + 1, V) = ({n + 1}, V), got {tuple(target_probs.shape)}")
    # One uniform per node, drawn up front, so that a seeded run is reproducible; then the walk runs on the host.
    uniforms = torch.rand(n, generator=generator, device=target_probs.device).tolist()
    probs = target_probs.float().cpu()
    q_all = None if draft_probs is None else draft_probs.float().cpu()
    tokens = nodes.view(-1).tolist()
    children: dict[int, list[int]] = {}
    for c, p in enumerate(tree.parents):
        children.setdefault(p, []).append(c)
    path: list[int] = []
    node, residual = -1, probs[0]
    while node in children:
        for c in children[node]:
            x = tokens[c]
            q = torch.nn.functional.one_hot(torch.tensor(x), probs.shape[-1]).float() if q_all is None else q_all[c]
            if uniforms[c] * float(q[x]) < float(residual[x]):  # u < r/q without dividing; q(x) = 0 passes iff r(x) > 0
                path.append(c)
                node, residual = c, probs[c + 1]
                break
            residual = after_rejection(residual, q)
        else:  # every sibling failed: the next token comes from what is left of r
            break
    next_token = int(sample(residual.to(target_probs.device), generator))
    return path, next_token, tokens


def keep_path_in_cache(cache: DynamicCache | None, n_nodes: int, path: Sequence[int]) -> None:
    """After a tree verification: move the accepted path's keys and values right after the committed ones, drop the rest.

    The cache's last n_nodes entries are the tree's nodes in breadth-first order; the path's are
    scattered among its siblings' (Medusa's `update_inference_inputs`), so gather them into place
    first. The loop does this through its runner (`ModelRunner.keep`), for static caches too.
    """
    if cache is not None:
        DynamicKV(cache).keep(n_nodes, path)
