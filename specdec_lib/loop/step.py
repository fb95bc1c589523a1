"""One speculative step, readable in one screen: propose, one target call, the acceptance rule, commit, tell the drafter.

A chain of drafts is a token tree of width 1 (`TokenTree.chain`), so chains and trees (chapter 09)
share every line below: the only difference is whether the target call needs a tree's 4D mask.
The acceptance rule is an object: `GREEDY` (chapter 01, on any tree) or `REJECTION` (chapter 03).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from .drafter import Drafter, Proposal, Verified, hidden_request
from .kv_cache import ModelRunner
from .sampling import Sampler, rejection_verify_tensors
from .tree import TokenTree, greedy_tree_verdict, sample_tree_verdict, tree_forward
from .tree_growth import DynamicTree


@dataclass
class StepRecord:
    """What happened in one speculative step: drafted tokens, which passed, the target's token."""

    draft_tokens: list[int]  # every drafted token: a chain's in order, a tree's nodes breadth-first
    n_accepted: int
    next_token: int
    p_draft: list[float] | None = None  # target probability p(x) of each drafted x (sampling only)
    q_draft: list[float] | None = None  # draft probability q(x) of each drafted x (sampling only)
    tree: TokenTree | None = None  # the shape drafted: a chain is a tree of width 1; None when nothing was drafted
    path: list[int] | None = None  # the nodes accepted, root side first (a chain: 0 .. n_accepted - 1)

    def __post_init__(self) -> None:
        if self.tree is None and self.draft_tokens:
            self.tree = TokenTree.chain(len(self.draft_tokens))
        if self.path is None:
            self.path = list(range(self.n_accepted))

    @property
    def depth(self) -> int:
        """The most drafts this step could accept: a chain's length, a tree's depth (0: nothing drafted)."""
        return 0 if self.tree is None else self.tree.depth

    @property
    def bonus(self) -> bool:
        """True when there were drafts and a whole chain or root-to-leaf path passed, so next_token is a free bonus."""
        return self.depth > 0 and self.n_accepted == self.depth

    @property
    def accepted_tokens(self) -> list[int]:
        """The drafted tokens the target accepted, in order."""
        return [self.draft_tokens[i] for i in self.path]

    @property
    def new_tokens(self) -> list[int]:
        """The tokens this step appended (before any EOS cut)."""
        return self.accepted_tokens + [self.next_token]


class Rule(Protocol):
    """An acceptance rule: from a proposal and the target's logits, the step's record (which drafts pass, the next token)."""

    name: str

    def judge(self, proposal: Proposal, logits: torch.Tensor, sampler: Sampler) -> StepRecord:
        """logits (n + 1, V): the target after the committed text, then after each drafted token (node)."""


class GreedyRule:
    """Chapter 01's rule, on any tree: keep the longest path of drafts equal to the target's argmax, then its argmax."""

    name = "greedy"

    def judge(self, proposal: Proposal, logits: torch.Tensor, sampler: Sampler) -> StepRecord:
        """The accepted path and the target's next token; one host sync."""
        tree = proposal.shape
        if tree is None:  # nothing drafted: the target's own token, as in plain decoding
            return StepRecord([], 0, int(logits[0].argmax()))
        path, next_token, tokens = greedy_tree_verdict(proposal.tokens, tree, logits)
        return StepRecord(tokens, len(path), next_token, tree=tree, path=path)


class RejectionRule:
    """Chapter 03's rule: accept draft x with probability min(1, p(x)/q(x)), else draw from the residual; on a tree, sibling by sibling."""

    name = "rejection"

    def judge(self, proposal: Proposal, logits: torch.Tensor, sampler: Sampler) -> StepRecord:
        """Drafts passed and the next token, with p(x) and q(x) of every draft for the record."""
        target_probs, draft_probs = sampler.probs(logits), proposal.probs
        tree = proposal.tree
        if tree is not None and not tree.is_chain:  # chapter 09: try each node's children in turn
            path, next_token, tokens = sample_tree_verdict(proposal.tokens, tree, target_probs, draft_probs, sampler.generator)
            rows = torch.tensor([p + 1 for p in tree.parents], device=target_probs.device)  # each node's parent's row
            index = proposal.tokens.to(target_probs.device)
            p = target_probs[rows, index].tolist()
            q = [1.0] * tree.size if draft_probs is None else draft_probs[torch.arange(tree.size, device=draft_probs.device), index.to(draft_probs.device)].tolist()
            return StepRecord(tokens, len(path), next_token, p, q, tree=tree, path=path)
        drafts, k = proposal.tokens, proposal.tokens.shape[0]
        if draft_probs is None:  # a deterministic draft is a sampler whose q is one-hot
            draft_probs = torch.nn.functional.one_hot(drafts, logits.shape[-1]).float()
        n, nxt = rejection_verify_tensors(drafts, draft_probs, target_probs, sampler.generator)
        rows = torch.arange(k, device=target_probs.device)
        # The one host sync the control flow needs, then the probabilities the record shows.
        n, next_token, *drafted = torch.cat([n.view(1), nxt.view(1), drafts]).tolist()
        p, q = target_probs[rows, drafts].tolist(), draft_probs[rows, drafts].tolist()
        return StepRecord(drafted, n, next_token, p, q)


GREEDY, REJECTION = GreedyRule(), RejectionRule()
VERIFIERS = ("auto", "greedy", "rejection")


def pick_rule(verifier: Literal["auto", "greedy", "rejection"] | Rule, sampler: Sampler) -> Rule:
    """The rule a run verifies with: 'auto' is greedy at temperature 0 and rejection sampling otherwise."""
    if not isinstance(verifier, str) and callable(getattr(verifier, "judge", None)) and hasattr(verifier, "name"):
        return verifier  # a rule object (see Rule)
    if verifier not in VERIFIERS:
        raise ValueError(f"verifier must be one of {VERIFIERS} or a rule object with `name` and `judge`, got {verifier!r}")
    if verifier == "greedy" and not sampler.greedy:
        raise ValueError("verifier='greedy' needs temperature=0; sampling needs the rejection rule")
    return REJECTION if verifier == "rejection" or not sampler.greedy else GREEDY


def propose(drafter: Drafter, seq: torch.Tensor, k: int, tree: TokenTree | DynamicTree | None, sampler: Sampler) -> Proposal:
    """The drafter's proposal: up to k chained tokens, or a tree (a fixed shape's nodes, or one it grows); nothing when there is no room."""
    if tree is None:
        return drafter.propose(seq, k, sampler) if k > 0 else Proposal(seq.new_empty(0))
    proposal = drafter.propose_tree(seq, tree)
    if proposal.tree is None and proposal.tokens.numel():  # the drafter filled a breadth-first prefix of the tree
        if not isinstance(tree, TokenTree):
            raise ValueError(f"{type(drafter).__name__}.propose_tree grew a dynamic tree but returned no shape: "
                             "set Proposal.tree to the tree its tokens fill")
        proposal.tree = TokenTree(tree.parents[: proposal.tokens.numel()])
    return proposal


@torch.inference_mode()
def speculative_step(
    runner: ModelRunner, drafter: Drafter, seq: torch.Tensor, rule: Rule, sampler: Sampler, *,
    k: int = 0, tree: TokenTree | DynamicTree | None = None,
) -> tuple[StepRecord, torch.Tensor]:
    """One round: draft k tokens (or a tree), verify them in one target call, keep what passed; (record, new seq)."""
    proposal = propose(drafter, seq, k, tree, sampler)
    shape, first = proposal.shape, runner.cached_length
    n, hidden = (0 if shape is None else shape.size), hidden_request(drafter)
    if shape is None or shape.is_chain:  # a chain needs only the causal mask
        logits, states = runner.forward(torch.cat([seq, proposal.tokens.view(1, -1)], dim=1), keep=n + 1, hidden=hidden)
    else:  # each node sees the committed text and its own ancestors (chapter 09)
        logits, states = tree_forward(runner, seq, proposal.tokens, shape, keep=n + 1, hidden=hidden)
    record = rule.judge(proposal, logits, sampler)
    # Commit: the accepted drafts' entries stay (a tree's path gathered into place), the rest are
    # rolled back by position. The newest token (correction or bonus) is not fed yet.
    runner.keep(n, record.path)
    seq = torch.cat([seq, seq.new_tensor([record.new_tokens])], dim=1)
    drafter.update(seq, record, Verified(logits, states, first))
    return record, seq
