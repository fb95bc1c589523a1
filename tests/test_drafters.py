"""Drafters beyond a plain draft model (chapter 07): prompt lookup, and a model draft that stops early or adapts k.

Every one must leave the output exactly the target's: greedy equals generate(), sampling follows p.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from conftest import cached_pair, prompts
from specdec_lib import speculative_generate
from specdec_lib.drafters import ModelDrafter, PromptLookupDrafter, StepCosts, lookup_continuation, match_length
from specdec_lib.loop.kv_cache import CacheSpec
from specdec_lib.loop.sampling_check import chi2_pvalue
from specdec_lib.testing import exact_two_token_distribution, tiny_pair

NEW = 32
P_MIN = 1e-3


def t(*ids: int) -> torch.Tensor:
    return torch.tensor(ids)


@pytest.mark.parametrize(
    "tokens, k, kwargs, expected",
    [
        (t(1, 2, 3, 4), 3, {}, []),  # the last token never occurred before: nothing to propose
        (t(5, 6, 7, 5, 6), 3, {}, [7, 5, 6]),  # the 2-gram (5, 6) occurred at the start
        (t(1, 2, 1), 3, {}, [2, 1]),  # a match whose continuation runs into the end: shorter than k
        (t(1, 2, 1, 3, 1), 3, {}, [3, 1]),  # a repeated n-gram: the most recent occurrence wins
        (t(2, 3, 7, 9, 3, 5, 2, 3), 3, {}, [7, 9, 3]),  # the longest matching n-gram wins over a later shorter one
        (t(2, 3, 7, 9, 3, 5, 8, 3), 3, {"min_ngram_size": 2}, []),  # only a 1-gram matches, and 1 < min
        (t(5, 6, 7, 5, 6), 0, {}, []),  # k = 0
        (t(4,), 3, {}, []),  # a one-token text has nothing earlier
        (t(1, 1, 1, 1), 2, {"max_ngram_size": 2}, [1]),  # the most recent match, though an older one has more after it
    ],
)
def test_lookup_continuation(tokens, k, kwargs, expected):
    assert lookup_continuation(tokens, k, **kwargs).tolist() == expected


@pytest.mark.parametrize(
    "tokens, start, n, limit, expected",
    [
        (t(9, 5, 6, 7, 9, 5, 6), 1, 2, 8, 3),  # (5, 6) matched, and the 9 before both agrees too
        (t(8, 5, 6, 7, 9, 5, 6), 1, 2, 8, 2),  # 8 vs 9: the match is exactly the n-gram
        (t(9, 5, 6, 7, 9, 5, 6), 1, 2, 2, 2),  # capped at limit
        (t(5, 6, 5, 6), 0, 2, 8, 2),  # the earlier stretch starts the text: nothing before it to compare
        (t(1, 1, 1, 1), 2, 1, 8, 3),  # overlapping stretches: 1 1 1 ending at index 2 equals 1 1 1 ending at 3
    ],
)
def test_match_length(tokens, start, n, limit, expected):
    assert match_length(tokens, start, n, limit) == expected


@pytest.mark.parametrize(
    "tokens, k, expected",
    [
        (t(5, 6, 7, 5, 6), 3, [7, 5]),  # a 2-token match earns 2 tokens
        (t(3, 4, 5, 6, 7, 8, 3, 4, 5, 6), 8, [7, 8, 3, 4]),  # the 4-token stretch 3 4 5 6 earns 4 (more than the 3-gram)
        (t(3, 4, 5, 6, 7, 8, 3, 4, 5, 6), 2, [7, 8]),  # never more than k
        (t(2, 9, 7, 3, 9), 3, [7]),  # a lone 1-token coincidence earns 1
        (t(1, 2, 3, 4), 3, []),  # still nothing without a match
    ],
)
def test_adaptive_lookup_proposes_as_many_tokens_as_the_match_is_long(tokens, k, expected):
    assert lookup_continuation(tokens, k, adaptive=True).tolist() == expected
    drafter = PromptLookupDrafter()  # adaptive by default
    assert drafter.propose(tokens.view(1, -1), k, sampler=None).tokens.tolist() == expected
    fixed = PromptLookupDrafter(adaptive=False).propose(tokens.view(1, -1), k, sampler=None).tokens.tolist()
    assert fixed == lookup_continuation(tokens, k).tolist() and len(fixed) >= len(expected)


@pytest.mark.parametrize("kwargs", [dict(max_ngram_size=0), dict(min_ngram_size=0), dict(max_ngram_size=2, min_ngram_size=3),
                                    dict(max_ngram_size=True), dict(max_ngram_size=2.5), dict(adaptive="yes")])
def test_prompt_lookup_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="ngram_size|adaptive"):
        PromptLookupDrafter(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(confidence_threshold=-0.1), dict(confidence_threshold=1.5),
                                    dict(confidence_threshold=float("nan")), dict(schedule="fast")])
def test_model_drafter_bad_arguments(kwargs):
    _, draft = cached_pair("gpt2", "medium")
    with pytest.raises(ValueError, match="confidence_threshold|schedule"):
        ModelDrafter(draft, **kwargs)


@pytest.mark.parametrize("verify, draft", [({2: 1.1}, 0.1), ({1: 1.0, 3: 1.2}, 0.1), ({1: 1.0}, 0.1),
                                           ({1: 1.0, 2: 0.0}, 0.1), ({1: 1.0, 2: float("nan")}, 0.1),
                                           ({1: 1.0, 2: 1.1}, -0.1), ({1: 1.0, 2: 1.1}, float("inf"))])
def test_step_costs_bad_arguments(verify, draft):
    with pytest.raises(ValueError, match="verify|draft"):
        StepCosts(verify, draft)


def test_model_drafter_costs_must_be_step_costs():
    _, draft = cached_pair("gpt2", "medium")
    with pytest.raises(TypeError, match="StepCosts"):
        ModelDrafter(draft, costs={1: 1.0, 2: 1.1})


def test_step_costs_extrapolate_and_decide():
    costs = StepCosts({1: 1.0, 2: 1.1, 3: 1.5}, draft=0.1)
    assert [costs.verify_cost(n) for n in (1, 3, 4, 6)] == pytest.approx([1.0, 1.5, 1.9, 2.7])  # the last slope goes on
    # A first draft after one draft call: worth it when (1 + chance) / (1.1 + 0.1) >= 1 / (1 + 0.1), chance >= 1/11.
    assert costs.pays(1.0, 0.1, 0, 1) and not costs.pays(1.0, 0.08, 0, 1)
    # A second one, from 1.5 expected tokens after two calls: (1.5 + chance) / 1.7 >= 1.5 / 1.3, chance >= 0.4615.
    assert costs.pays(1.5, 0.47, 1, 2) and not costs.pays(1.5, 0.46, 1, 2)
    free = StepCosts({1: 1.0, 2: 1.0}, draft=0.0)  # verification costs nothing more: any chance pays
    assert free.pays(3.0, 1e-6, 5, 6)


def test_monotone_fit_never_goes_down_and_break_even_is_never_negative():
    raw = {1: 1.0, 2: 1.3, 3: 1.9, 4: 1.6, 5: 0.9, 6: 2.4}  # noisy: dips at 4 and 5
    costs = StepCosts.monotone(raw, draft=0.1)
    fitted = [costs.verify[n] for n in sorted(raw)]
    assert fitted[0] == 1.0 and all(a <= b for a, b in zip(fitted, fitted[1:]))
    assert costs.measured == raw
    # The least-squares line through counts 2..6: mean 1.62 at n = 4, slope 1.2 / 10 = 0.12 per token.
    assert fitted[1:] == pytest.approx([1.62 + 0.12 * (n - 4) for n in range(2, 7)])
    assert all(costs.break_even(d) >= 0 for d in range(1, 8))
    raw_costs = StepCosts(raw, draft=0.1)
    assert min(raw_costs.break_even(d) for d in range(1, 6)) < 0  # what the raw timings would have said


def test_monotone_fit_smooths_steps_so_break_even_chances_rise_with_the_draft():
    """Flat, then a jump (chapter 07's committed costs had one): raw, draft 3 looks never worth it and draft 4 free."""
    raw = {1: 1.0, 2: 1.02, 3: 1.03, 4: 1.6, 5: 1.62, 6: 1.65}
    steps = StepCosts(raw, draft=0.1)
    assert steps.break_even(3) > 1 > 0.05 > steps.break_even(4)
    costs = StepCosts.monotone(raw, draft=0.1)
    chances = [costs.break_even(d) for d in range(1, 6)]
    assert all(0 <= a <= b <= 1 for a, b in zip(chances, chances[1:])), chances
    cheaper = StepCosts.monotone({1: 1.0, 2: 0.69, 3: 0.7, 4: 0.72}, draft=0.1)  # 2 rows cheaper than 1 (chapter 09)
    assert cheaper.verify[2] == 1.0 and cheaper.break_even(1) == 0.0
    flat = StepCosts.monotone({1: 1.0, 2: 1.0, 3: 1.0}, draft=0.0)
    assert flat.verify == {1: 1.0, 2: 1.0, 3: 1.0}
    with pytest.raises(ValueError, match="no gaps"):  # one count only: the constructor's clear error, not a division by 0
        StepCosts.monotone({1: 1.0}, draft=0.1)


def test_worth_a_call_skips_draft_calls_that_cannot_pay():
    dear = StepCosts({1: 1.0, 2: 1.9}, draft=0.3)  # a CPU at a big batch: 2 tokens per row cost nearly 2 steps
    assert not dear.worth_a_call(1.0, 1.0, 0, 0)  # even a certain draft loses: (1 + 1) / (1.9 + 0.3) < 1
    assert StepCosts({1: 1.0, 2: 1.1}, draft=0.1).worth_a_call(1.0, 1.0, 0, 0)


FLAT = StepCosts({1: 1.0, 2: 1.0}, draft=0.0)  # never stops anything: the threshold alone decides
CLIFF = StepCosts({1: 1.0, 2: 1.0, 3: 1.0, 4: 10.0}, draft=0.0)  # a 3rd draft never pays
CPU_LIKE = StepCosts({1: 1.0, 2: 1.05, 3: 1.1, 4: 1.5, 5: 1.6, 6: 1.7}, draft=0.1)  # this course's CPU, roughly


@pytest.mark.parametrize("costs", [CLIFF, CPU_LIKE], ids=["cliff", "cpu-like"])
@pytest.mark.parametrize("threshold", [None, 0.4])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_cost_aware_draft_equals_target_greedy(arch, threshold, costs):
    """Stopping before a draft that does not pay leaves the output the target's, and really shortens chains."""
    target, draft = cached_pair(arch, "medium")
    dropped, lengths, drafted, drafted_without = 0, set(), 0, 0
    for p, ref in zip(prompts(), hf_greedy(arch)):
        out = speculative_generate(target, ModelDrafter(draft, confidence_threshold=threshold, costs=costs), p,
                                   max_new_tokens=NEW, k=8)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        dropped += out.stats.draft_calls - sum(out.stats.proposed)  # a draft computed, then judged not worth verifying
        lengths |= set(out.stats.proposed[:-1])
        drafted += sum(out.stats.proposed)
        without = speculative_generate(target, ModelDrafter(draft, confidence_threshold=threshold), p, max_new_tokens=NEW, k=8)
        drafted_without += sum(without.stats.proposed)
    assert len(lengths) > 1 and drafted < drafted_without  # the costs really shortened chains
    if costs is CLIFF:  # a 3rd draft can never pay, so its call is never made (StepCosts.worth_a_call)
        assert max(lengths) <= 2 and dropped == 0


def test_flat_costs_change_nothing():
    """With verification free, every draft pays: the cost-aware run is the threshold's own run, step for step."""
    target, draft = cached_pair("llama", "medium")
    p = prompts()[6]
    plain = speculative_generate(target, ModelDrafter(draft, confidence_threshold=0.4), p, max_new_tokens=NEW, k=8)
    aware = speculative_generate(target, ModelDrafter(draft, confidence_threshold=0.4, costs=FLAT), p,
                                 max_new_tokens=NEW, k=8)
    assert aware.stats.proposed == plain.stats.proposed and torch.equal(aware.sequences, plain.sequences)
    assert aware.stats.draft_calls == plain.stats.draft_calls


@lru_cache(maxsize=None)
def hf_greedy(arch: str) -> list[torch.Tensor]:
    target, _ = cached_pair(arch, "medium")
    return [target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW)
            for p in prompts()]


@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "fixed"])
@pytest.mark.parametrize("k", [1, 2, 4, 6])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral"])
def test_prompt_lookup_equals_target_greedy(arch, k, adaptive):
    target, _ = cached_pair(arch, "medium")
    accepted = 0
    for p, ref in zip(prompts(), hf_greedy(arch)):
        out = speculative_generate(target, PromptLookupDrafter(adaptive=adaptive), p, max_new_tokens=NEW, k=k)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        assert out.stats.draft_calls == 0
        accepted += sum(out.stats.accepted)
    assert accepted > 0  # tiny random models repeat themselves: lookups really were accepted


@pytest.mark.parametrize("drafter_kwargs", [dict(confidence_threshold=0.4), dict(schedule="heuristic"),
                                            dict(confidence_threshold=0.4, schedule="heuristic")],
                         ids=["threshold", "heuristic", "both"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_dynamic_draft_length_equals_target_greedy(arch, drafter_kwargs):
    target, draft = cached_pair(arch, "medium")
    lengths = set()
    for p, ref in zip(prompts(), hf_greedy(arch)):
        out = speculative_generate(target, ModelDrafter(draft, **drafter_kwargs), p, max_new_tokens=NEW, k=8)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        assert out.stats.draft_calls == sum(out.stats.proposed)
        lengths |= set(out.stats.proposed[:-1])  # the last step is cut by max_new_tokens
    assert len(lengths) > 1 and max(lengths) <= 8  # the length really varied, and k stayed the maximum


def test_threshold_extremes():
    """Threshold 0 never stops early (the plain draft's run); threshold 1 stops after every first token."""
    target, draft = cached_pair("llama", "medium")
    p = prompts()[6]
    plain = speculative_generate(target, draft, p, max_new_tokens=NEW, k=4)
    never = speculative_generate(target, ModelDrafter(draft, confidence_threshold=0.0), p, max_new_tokens=NEW, k=4)
    assert never.stats.proposed == plain.stats.proposed and torch.equal(never.sequences, plain.sequences)
    always = speculative_generate(target, ModelDrafter(draft, confidence_threshold=1.0), p, max_new_tokens=NEW, k=4)
    assert set(always.stats.proposed[:-1]) == {1} and torch.equal(always.sequences, plain.sequences)


def test_heuristic_schedule_grows_after_full_acceptance_and_shrinks_after_a_miss():
    target, draft = cached_pair("gpt2", "medium")
    new, k = 60, 6
    out = speculative_generate(target, ModelDrafter(draft, schedule="heuristic"), prompts()[9], max_new_tokens=new, k=k)
    s, done = out.stats, 0
    assert s.proposed[0] == k
    for i in range(len(s.proposed) - 1):
        done += s.accepted[i] + 1
        cap = min(k, new - done - 1)  # what the loop allows next
        grown = s.proposed[i] + 2 if s.accepted[i] == s.proposed[i] else max(1, s.proposed[i] - 1)
        assert s.proposed[i + 1] == min(cap, grown)
    assert len(set(s.proposed)) > 2


@pytest.mark.parametrize("name", [pytest.param("prompt lookup", marks=pytest.mark.slow),
                                  pytest.param("fixed-length prompt lookup", marks=pytest.mark.slow),
                                  pytest.param("threshold + heuristic", marks=pytest.mark.slow), "cost-aware"])
def test_sampling_stays_exact(name):
    """At temperature 1 the first two tokens follow the target's exact joint distribution (chi-square)."""
    vocab = 8
    target, draft = tiny_pair("llama", noise=0.3, vocab_size=vocab, n_layer=1, hidden=32)
    # "1 5" occurs twice, so the lookup proposes "x 1": pick the x the target itself likes most there,
    # so that its drafts are accepted often enough to test both outcomes.
    candidates = torch.tensor([[1, 5, x, 1, 5] for x in range(vocab)])
    with torch.no_grad():
        likes = torch.softmax(target(candidates).logits[:, -1], -1)[torch.arange(vocab), torch.arange(vocab)]
    prompt = candidates[int(likes.argmax())].view(1, -1)
    exact = exact_two_token_distribution(target, prompt, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    pairs, accepted, lengths = [], 0, set()
    # cost-aware: a 1st draft is free to verify, a 2nd pays only after a 1st the draft is fairly sure of
    # (in this pair about 2/3 of runs propose two); the decision depends on the 1st draft, never on the 2nd
    costs = StepCosts({1: 1.0, 2: 1.0, 3: 1.1}, draft=0.0)
    for _ in range(4_000):
        drafter = PromptLookupDrafter() if name == "prompt lookup" else \
            PromptLookupDrafter(adaptive=False) if name.startswith("fixed") else \
            ModelDrafter(draft, costs=costs) if name == "cost-aware" else \
            ModelDrafter(draft, confidence_threshold=0.4, schedule="heuristic")
        out = speculative_generate(target, drafter, prompt, max_new_tokens=3, k=2, temperature=1.0, generator=gen)
        a, b = out.sequences[0, 5:7].tolist()
        pairs.append(a * vocab + b)
        accepted += out.stats.accepted[0]
        lengths.add(out.stats.proposed[0])
    assert accepted > 400  # drafts really were accepted
    if name == "cost-aware":
        assert lengths == {1, 2}  # and the rule really stopped some chains short
    assert chi2_pvalue(pairs, exact) > P_MIN


class RecordingDrafter(ModelDrafter):
    """A ModelDrafter that asks for the target's hidden states and records what each verification handed it."""

    needs_hidden_states = True

    def start(self, target, input_ids, *, cache=CacheSpec()):
        super().start(target, input_ids, cache=cache)
        self.seen = []

    def update(self, seq, record, verified):
        length_before = seq.shape[1] - record.n_accepted - 1  # the step appended the accepted drafts and one token
        self.seen.append((length_before, verified.first_position, tuple(verified.hidden.shape), verified.logits.shape[0]))
        super().update(seq, record, verified)


@pytest.mark.parametrize("use_cache", [True, False])
def test_drafters_can_receive_the_targets_hidden_states(use_cache):
    """What the EAGLE chapter needs: the last hidden states of exactly the positions fed in each verification call."""
    target, draft = cached_pair("llama", "medium")
    p = prompts()[5]
    drafter = RecordingDrafter(draft)
    out = speculative_generate(target, drafter, p, max_new_tokens=NEW, k=3, use_cache=use_cache)
    assert torch.equal(out.sequences, speculative_generate(target, draft, p, max_new_tokens=NEW, k=3).sequences)
    assert len(drafter.seen) == len(out.stats.proposed) > 1
    for i, ((length, first, hidden_shape, n_logits), proposed) in enumerate(zip(drafter.seen, out.stats.proposed)):
        # With a cache, the target has seen all but the newest token (none before the first call).
        assert first == (0 if not use_cache or i == 0 else length - 1)
        assert hidden_shape == (length - first + proposed, target.config.hidden_size)  # fed tokens + drafts
        assert n_logits == proposed + 1


def test_best_length_maximises_goodput_down_to_a_plain_step():
    cpu = StepCosts({1: 1.0, 2: 1.6, 3: 1.8}, draft=0.1)  # this CPU at batch 1 with its small-batch kernels
    assert cpu.best_length(0.3, 2) == 0  # 1.3 tokens for 1.7 units loses to 1 token for 1
    assert cpu.best_length(0.9, 2) == 2
    cheap = StepCosts({1: 1.0, 2: 1.0, 3: 1.08}, draft=0.09)
    assert cheap.best_length(0.3, 2) == 1 and cheap.goodput(0.3, 1) == pytest.approx(1.3 / 1.09)
    assert cheap.goodput(0.0, 0) == 1.0 and cheap.goodput(1.0, 2) == pytest.approx(3 / (1.08 + 0.18))


def test_cost_aware_plan_makes_no_draft_call_where_the_seen_rate_cannot_pay():
    target, draft = cached_pair("llama", "low")  # a useless draft: what it sees soon says "don't"
    costs = StepCosts({1: 1.0, 2: 1.1, 3: 1.3}, draft=0.2)  # a first draft pays at alpha 0.5, not below 0.3
    out = speculative_generate(target, ModelDrafter(draft, costs=costs), prompts()[5], max_new_tokens=NEW, k=2)
    p = prompts()[5]
    assert torch.equal(out.sequences, target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW))
    steps = out.stats.proposed
    assert steps[0] > 0 and steps[-1] == 0  # it tried, saw the draft fail, and stopped drafting
    assert out.stats.draft_calls < 2 * len(steps)
