"""The classic draft: a smaller causal LM with its own KV cache, one forward pass per proposed token."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import StaticLayer
from transformers.utils import logging as hf_logging

from ..loop.batch import BatchProposal, BatchRunner, BatchVerified, Rows
from ..loop.drafter import Counterpart, DrafterBase, Proposal, Verified, register_adapter
from ..loop.kv_cache import CacheSpec, ModelRunner, max_positions
from ..loop.sampling import Sampler
from ..loop.step import StepRecord
from ..loop.tree import TokenTree, tree_forward
from ..loop.tree_growth import Candidates, DynamicTree, grow

HF_ASSISTED = "HF assisted generation"  # the benchmark's name for transformers' counterpart of a draft model


def check_same_vocab(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    target_tokenizer: PreTrainedTokenizerBase | None = None,
    draft_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Raise a ValueError naming both sizes when the two models don't share a vocabulary."""
    t, d = target.config.vocab_size, draft.config.vocab_size
    if t != d:
        raise ValueError(f"target and draft vocabularies differ: target has {t} tokens, draft has {d}")
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise ValueError(
                f"target and draft tokenizers differ (target: {len(target_tokenizer)} tokens, "
                f"draft: {len(draft_tokenizer)} tokens); speculative decoding needs one shared tokenizer"
            )


SCHEDULES = ("constant", "heuristic")
PRIOR_SEEN = (1, 1)  # a run starts as if one draft had passed and one failed: alpha 0.5, so it tries drafting first


@dataclass(frozen=True)
class StepCosts:
    """What a speculative step costs on this machine, in single-token target calls (chapter 05's units).

    - ``verify[n]``: one target call over n new tokens (n - 1 drafts and the token before them), as
      `specdec_lib.bench.timing.verify_cost_ratios` measures it; ``verify[1]`` is 1.0 by definition.
    - ``draft``: one draft call, c (`measure_cost_ratio`).
    Counts above the largest measured n continue the last measured slope. For a batch (chapter 11)
    the unit is one plain batched step, and n counts new tokens per row.
    Raw timings are noisy and can dip as tokens are added; `StepCosts.monotone` fits them first (a line, never going down).
    """

    verify: Mapping[int, float]
    draft: float
    measured: Mapping[int, float] | None = field(default=None, compare=False)  # the raw timings a fit came from

    @classmethod
    def monotone(cls, verify: Mapping[int, float], draft: float) -> "StepCosts":
        """Costs fitted smooth and never going down as tokens are added; the raw timings kept in `measured`.

        Raw timings are noisy: a longer call can look cheaper (a negative break-even chance), and
        steps in them (flat, then a jump) make one draft look free and the next never worth it. A
        call's cost grows about linearly with its tokens (more rows in every product), so calls over
        2 or more tokens get the least-squares line through their timings, its slope at least 0; one
        token keeps 1.0 by definition, and no call costs less than that (a kernel that makes 2 rows
        cheaper than 1 makes the first draft free, not a gain).
        """
        counts = sorted(verify)
        many = [n for n in counts if n >= 2]
        if not many:  # nothing to fit: the constructor says what is missing
            return cls(dict(verify), draft, measured=dict(verify))
        mean_n = sum(many) / len(many)
        mean_v = sum(verify[n] for n in many) / len(many)
        spread = sum((n - mean_n) ** 2 for n in many)
        slope = max(0.0, sum((n - mean_n) * (verify[n] - mean_v) for n in many) / spread) if spread else 0.0
        fitted = {n: 1.0 if n == 1 else max(1.0, mean_v + slope * (n - mean_n)) for n in counts}
        return cls(fitted, draft, measured=dict(verify))

    def break_even(self, d: int) -> float:
        """The chance draft d must have of passing to pay for itself, when drafts 1 .. d - 1 are certain; above 1: never."""
        now = self.verify_cost(d) + d * self.draft
        return d * ((self.verify_cost(d + 1) + d * self.draft) / now - 1)

    def __post_init__(self) -> None:
        counts = sorted(self.verify)
        if counts[:2] != [1, 2] or counts != list(range(1, len(counts) + 1)):
            raise ValueError(f"verify must give the cost of 1, 2, ... n new tokens with no gaps, got counts {counts}")
        if any(not (math.isfinite(v) and v > 0) for v in self.verify.values()):
            raise ValueError(f"verify costs must be positive and finite, got {dict(self.verify)}")
        if not (math.isfinite(self.draft) and self.draft >= 0):
            raise ValueError(f"draft cost must be >= 0 and finite, got {self.draft!r}")

    def verify_cost(self, n: int) -> float:
        """One target call over n new tokens; past the last measured count, the last slope continues."""
        top = len(self.verify)
        if n <= top:
            return self.verify[n]
        return self.verify[top] + (n - top) * (self.verify[top] - self.verify[top - 1])

    def pays(self, expected: float, chance: float, n_drafts: int, draft_calls: int) -> bool:
        """Whether proposing one more draft raises expected tokens per unit of cost.

        `expected` tokens from the `n_drafts` proposed so far (1 + the chance each passes), `chance`
        that the next one passes too, `draft_calls` already paid (spent either way).
        """
        now = self.verify_cost(n_drafts + 1) + draft_calls * self.draft
        more = self.verify_cost(n_drafts + 2) + draft_calls * self.draft
        return (expected + chance) / more >= expected / now

    def goodput(self, alpha: float, k: int) -> float:
        """Expected tokens per unit of cost of a step drafting k tokens that each pass with chance alpha (SmartSpec's goodput)."""
        tokens = k + 1.0 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
        return tokens / (self.verify_cost(k + 1) + k * self.draft)

    def best_length(self, alpha: float, k_max: int) -> int:
        """The draft length from 0 (a plain step) to k_max with the most goodput at acceptance rate alpha (the shorter on a tie)."""
        return max(range(k_max + 1), key=lambda k: (self.goodput(alpha, k), -k))

    def worth_a_call(self, expected: float, chance: float, n_drafts: int, draft_calls: int) -> bool:
        """Whether even a draft passing with `chance` (an upper bound) would pay for one more draft call and its verification.

        Checked before calling the draft: where verification is expensive (a CPU, a big batch) it
        skips draft calls that could never pay, so the step becomes a plain one at no extra cost.
        """
        now = self.verify_cost(n_drafts + 1) + draft_calls * self.draft
        more = self.verify_cost(n_drafts + 2) + (draft_calls + 1) * self.draft
        return (expected + chance) / more >= expected / now


class ModelDrafter(DrafterBase):
    """Drafts with a small model: up to k cached forward passes per step, rolled back to the accepted tokens after it.

    Ways to draft fewer than k tokens when that pays (transformers' assisted generation has the first two):
    - ``confidence_threshold``: stop after a token the draft itself gives less than this probability
      (it is still proposed); k is then a maximum. transformers' default is 0.4.
    - ``schedule="heuristic"``: the draft length grows by 2 after a step whose drafts all passed and
      shrinks by 1 otherwise, between 1 and the k the loop asks for.
    - ``costs`` (a `StepCosts` measured on this machine): first plan the step's length from the
      acceptance rate seen so far in this run (`StepCosts.best_length`: most goodput, down to 0, a
      plain step with no draft call at all), then stop before a draft whose chance of passing (the
      draft's top probability there, times its probabilities of the drafts before it) does not pay
      for verifying it. The checks come before sampling, so sampling stays exact. On a CPU,
      where verifying 4 tokens can cost 1.5 single-token calls, this keeps chains short; where
      verification is nearly flat in K (a GPU at batch 1), it seldom stops anything.
    None of them changes what the target accepts, so the output stays exactly the target's.
    """

    needs_hidden_states = False

    def __init__(
        self,
        model: PreTrainedModel,
        confidence_threshold: float | None = None,
        schedule: str = "constant",
        costs: StepCosts | None = None,
    ):
        if costs is not None and not isinstance(costs, StepCosts):
            raise TypeError(f"costs must be a StepCosts (see specdec_lib.bench.measure_step_costs), got {type(costs).__name__}")
        if confidence_threshold is not None and not 0.0 <= confidence_threshold <= 1.0:  # NaN fails too
            raise ValueError(f"confidence_threshold must lie in [0, 1] or be None, got {confidence_threshold!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.model, self.confidence_threshold, self.schedule, self.costs = model, confidence_threshold, schedule, costs
        self.runner: ModelRunner | None = None
        self.length: int | None = None  # the heuristic schedule's current draft length
        self.proposed = 0  # how many tokens the last proposal held
        self._outcomes = list(PRIOR_SEEN)  # [drafts accepted, drafts rejected] in this run, for the costs' plan
        self.last_tree: Candidates | None = None  # every node the last tree step grew, with its chance (chapter 09)

    @property
    def calls(self) -> int:
        """Forward passes of the draft model in the current run."""
        return self.runner.calls if self.runner else 0

    def start(self, target: PreTrainedModel, input_ids: torch.Tensor, *, cache: CacheSpec = CacheSpec()) -> None:
        """Check the vocabularies match and start with an empty cache of the kind `cache` asks for."""
        check_same_vocab(target, self.model)
        # Draft calls feed one token, or two after a step whose drafts all passed (the last draft and the bonus).
        self.runner = ModelRunner(self.model, spec=cache, compiled_lengths=(1, 2), role="draft")
        self.length, self.proposed, self._outcomes = None, 0, list(PRIOR_SEEN)

    def propose(self, seq: torch.Tensor, k: int, sampler: Sampler) -> Proposal:
        """Append the draft's own choice up to k times (never past its context limit); return them and q when sampling."""
        if self.schedule == "heuristic":  # the length never exceeds the k the loop allows
            self.length = k = k if self.length is None else min(self.length, k)
        limit = max_positions(self.model)
        if limit is not None:
            k = max(0, min(k, limit - seq.shape[1] + 1))
        k = self._planned(k)
        tokens, probs = [], []
        expected, chance = 1.0, 1.0  # tokens this step yields so far (the target's own one included); P(all drafts pass)
        for i in range(k):
            if self.costs is not None and not self.costs.worth_a_call(expected, chance, len(tokens), i):
                break  # not even a certain draft would pay for the call
            logits = self.runner.logits(seq)[-1]
            # The draft's own probabilities: softmax of its raw logits (before temperature), as transformers reads them.
            own = None if self.confidence_threshold is None and self.costs is None else torch.softmax(logits.float(), -1)
            # Decided before sampling, on the draft's best guess: dropping a sampled token because it looks unlikely
            # would skew the proposals away from q, and rejection sampling would no longer be exact.
            if self.costs is not None and not self.costs.pays(expected, chance * float(own.max()), len(tokens), i + 1):
                break
            token, q = sampler.choose(logits)
            token = token.to(seq.device).view(1)
            tokens.append(token)
            probs.append(q)
            seq = torch.cat([seq, token.view(1, 1)], dim=1)
            if own is not None:
                confidence = float(own[token.to(own.device)])  # a host sync
                chance, expected = chance * confidence, expected + chance * confidence
                if self.confidence_threshold is not None and confidence < self.confidence_threshold:
                    break
        self.proposed = len(tokens)
        if not tokens:
            return Proposal(seq.new_empty(0))
        return Proposal(torch.cat(tokens), None if sampler.greedy else torch.stack(probs).to(seq.device))

    def _planned(self, k: int) -> int:
        """With costs: the draft length, up to k, with the most goodput at the acceptance rate this run has seen."""
        if self.costs is None or k == 0:
            return k
        accepted, rejected = self._outcomes
        return self.costs.best_length(accepted / (accepted + rejected), k)

    def _saw(self, records: Sequence[StepRecord]) -> None:
        """Count the drafts that passed, and the one that failed in each step that did not take them all."""
        for record in records:
            if record.draft_tokens:
                self._outcomes[0] += record.n_accepted
                self._outcomes[1] += record.n_accepted < len(record.draft_tokens)

    def propose_tree(self, seq: torch.Tensor, tree: TokenTree | DynamicTree) -> Proposal:
        """Fill a fixed tree, or grow one where the draft is confident (chapter 09); one draft call per depth.

        Each depth feeds only its new nodes with a tree mask: the nodes above stay in the draft's
        cache until the step is over. The tree may come back shallower near the draft's context limit.
        The grown candidates stay in `last_tree`, for plots.
        """
        limit = max_positions(self.model)
        tree, self.proposed = tree if limit is None else tree.truncated(min(tree.depth, limit - seq.shape[1] + 1)), 0
        if tree is None:
            return Proposal(seq.new_empty(0))
        root = self.runner.logits(seq)[-1]
        # A dynamic sliding-window layer evicts keys by count, not by position, so cached nodes would
        # push committed keys out of it: there every depth feeds all the nodes again instead.
        refeed = self.runner.cache is not None and any(getattr(layer, "is_sliding", False) and not isinstance(layer, StaticLayer)
                                                       for layer in self.runner.cache.layers)

        def expand(tokens: torch.Tensor, fed: TokenTree, new: int) -> torch.Tensor:
            if refeed:
                self.runner.rollback(seq.shape[1])
            return tree_forward(self.runner, seq, tokens.to(seq.device), fed, keep=new)[0]

        nodes, shape, self.last_tree = grow(tree, root, expand)
        self.runner.rollback(seq.shape[1])  # the committed text stays cached; the nodes were guesses
        return Proposal(nodes.to(seq.device), tree=shape) if shape is not None else Proposal(seq.new_empty(0))

    def update(self, seq: torch.Tensor, record: StepRecord, verified: Verified) -> None:
        """Keep only cache entries of tokens still in seq (its newest token is not fed yet); adapt the schedule."""
        self.runner.rollback(seq.shape[1] - 1)
        self._saw([record])
        if self.schedule == "heuristic" and self.proposed:
            self.length = self.length + 2 if record.n_accepted == self.proposed else max(1, self.length - 1)

    # Chapter 11: the same drafting for every row of a batch at once, on a cache with one length per row.

    def start_batch(self, target: PreTrainedModel, rows: Rows, *, cache: CacheSpec = CacheSpec()) -> None:
        """Check the vocabularies match and start with an empty batch cache of the kind `cache` asks for."""
        check_same_vocab(target, self.model)
        self.runner = BatchRunner(self.model, cache, role="draft")
        self.length, self.proposed, self._outcomes = None, 0, list(PRIOR_SEEN)

    def propose_batch(self, rows: Rows, k: int, sampler: Sampler) -> BatchProposal:
        """k drafts in every row, one batched call each; the threshold and costs decide for the batch as a whole.

        With `costs` measured at this batch size, the step's length is first planned from the acceptance
        rate the batch has seen (most goodput, as SmartSpec defines it; 0 makes no draft call), then a
        draft is proposed only while the tokens the batch expects from it (the rows' chances summed)
        pay for verifying one more column.
        With `confidence_threshold`, drafting stops after a token every row's draft is unsure of.
        """
        if self.schedule == "heuristic":
            self.length = k = k if self.length is None else min(self.length, k)
        limit = max_positions(self.model)
        if limit is not None:
            k = max(0, min(k, limit - max(rows.lengths) + 1))
        k = self._planned(k)
        tokens, probs = [], []
        expected = torch.ones(rows.size)  # tokens each row expects from this step so far; chance all its drafts pass
        chance = torch.ones(rows.size)
        for i in range(k):
            if self.costs is not None and not self.costs.worth_a_call(
                    float(expected.sum()), float(chance.sum()), len(tokens), i):
                break  # not even certain drafts would pay for the call
            logits = self.runner.forward(rows)[0][:, -1]
            own = None if self.confidence_threshold is None and self.costs is None else torch.softmax(logits.float(), -1).cpu()
            if self.costs is not None and not self.costs.pays(
                    float(expected.sum()), float((chance * own.max(-1).values).sum()), len(tokens), i + 1):
                break
            token, q = sampler.choose(logits)
            tokens.append(token)
            probs.append(q)
            rows = rows.append(token.view(-1, 1))
            if own is not None:
                confidence = own.gather(1, token.cpu().view(-1, 1))[:, 0]
                chance = chance * confidence
                expected = expected + chance
                if self.confidence_threshold is not None and bool((confidence < self.confidence_threshold).all()):
                    break
        self.proposed = len(tokens)
        if not tokens:
            return BatchProposal.empty(rows)
        drafted = torch.stack(tokens, dim=1).to(rows.tokens.device)
        return BatchProposal(drafted, [len(tokens)] * rows.size, None if sampler.greedy else torch.stack(probs, dim=1))

    def update_batch(self, rows: Rows, records: Sequence[StepRecord], verified: BatchVerified) -> None:
        """Keep each row's cache entries of tokens still in it; the schedule grows only when every row took every draft."""
        self.runner.commit(rows)
        self._saw(records)
        if self.schedule == "heuristic" and self.proposed:
            everything = all(r.n_accepted == len(r.draft_tokens) == self.proposed for r in records)
            self.length = self.length + 2 if everything else max(1, self.length - 1)

    def select_rows(self, rows: Sequence[int]) -> None:
        """Only these rows go on."""
        self.runner.select(rows)

    def transformers_counterpart(self, *, k: int, max_new_tokens: int, eos_token_id: int | None = None) -> Counterpart:
        """transformers' assisted generation with this draft model, k, threshold and schedule."""
        return HF_ASSISTED, lambda target, ids: hf_assisted_generate(
            target, self.model, ids, max_new_tokens=max_new_tokens, k=k, confidence_threshold=self.confidence_threshold,
            schedule=self.schedule, eos_token_id=eos_token_id)


def hf_assisted_generate(
    target: PreTrainedModel, draft: PreTrainedModel, input_ids: torch.Tensor, *, max_new_tokens: int, k: int,
    confidence_threshold: float | None = None, schedule: str = "constant", eos_token_id: int | None = None,
) -> torch.Tensor:
    """transformers' assisted generation, greedy, with our k, confidence threshold (None: off) and schedule."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id, pad_token_id=0)
    # transformers reads the drafting schedule from the *assistant's* generation config.
    saved = copy.deepcopy(draft.generation_config)
    draft.generation_config.num_assistant_tokens = k
    draft.generation_config.num_assistant_tokens_schedule = schedule
    draft.generation_config.assistant_confidence_threshold = confidence_threshold or 0.0
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its internal draft generate() warns about its own arguments
    try:
        ids = input_ids.to(target.device)
        return target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, generation_config=config)
    finally:
        draft.generation_config = saved
        hf_logging.set_verbosity(verbosity)


# A bare causal LM passed as the draft (speculative_generate(target, draft_model, ...)) drafts as a ModelDrafter.
register_adapter(PreTrainedModel, ModelDrafter)
