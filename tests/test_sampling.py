"""Speculative sampling leaves the target's distribution unchanged: chi-square tests that a real bug fails."""

from __future__ import annotations

import math

import pytest
import torch

from specdec_lib import logits_to_probs, rejection_verify, sample, speculative_generate
from specdec_lib.loop.sampling import residual_distribution
from specdec_lib.loop.sampling_check import (
    buggy_argmax_verify,
    buggy_resample_from_p,
    chi2_pvalue,
    run_toy_verifier,
    toy_distributions,
)
from specdec_lib.testing import exact_two_token_distribution, tiny_pair

P_MIN = 1e-3  # the threshold for "looks like p"


def test_first_token_is_distributed_as_p0():
    p, _ = toy_distributions()
    first, _, _ = run_toy_verifier(rejection_verify)
    assert chi2_pvalue(first, p[0]) > P_MIN


def test_second_token_given_first_accepted_is_distributed_as_p1():
    p, _ = toy_distributions()
    _, second, accepted = run_toy_verifier(rejection_verify)
    assert (accepted >= 1).sum() > 5_000  # enough conditional samples for the test to have power
    assert chi2_pvalue(second[accepted >= 1], p[1]) > P_MIN


@pytest.mark.parametrize("bug", [buggy_argmax_verify, buggy_resample_from_p])
def test_planted_bugs_fail_the_same_check(bug):
    p, _ = toy_distributions()
    first, _, _ = run_toy_verifier(bug)
    assert chi2_pvalue(first, p[0]) < 1e-6


def test_acceptance_matches_one_minus_total_variation():
    p, q = toy_distributions()
    alpha = [float(torch.minimum(p[i], q[i]).sum()) for i in range(2)]  # = 1 - TV(p_i, q_i)
    _, _, accepted = run_toy_verifier(rejection_verify)
    n = len(accepted)
    reached_1 = accepted >= 1
    measured = [reached_1.mean(), (accepted[reached_1] == 2).mean()]
    for a, m, trials in zip(alpha, measured, [n, reached_1.sum()]):
        assert abs(m - a) < 4 * math.sqrt(a * (1 - a) / trials), (m, a)
    # Expected accepted tokens per step: alpha_0 + alpha_0 * alpha_1.
    expected = alpha[0] + alpha[0] * alpha[1]
    assert accepted.mean() == pytest.approx(expected, abs=4 * accepted.std() / math.sqrt(n))


def test_zero_residual_falls_back_to_p():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    # q == p: the residual is all zeros, which must not produce NaNs.
    assert torch.equal(residual_distribution(p[0], p[0]), p[0])
    n, nxt = rejection_verify(torch.tensor([0]), p[:1], p, torch.Generator().manual_seed(0))
    assert n == 1 and 0 <= nxt < 3


def test_drafted_token_with_zero_draft_probability_is_handled():
    p = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    q = torch.tensor([[1.0, 0.0]])
    # Token 1 has q = 0 (impossible draw) but p = 1: accepted; token 0 has p = 0: always rejected.
    assert rejection_verify(torch.tensor([1]), q, p)[0] == 1
    assert rejection_verify(torch.tensor([0]), q, p) == (0, 1)


class TestLogitsToProbs:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])

    def test_temperature_zero_is_one_hot_argmax(self):
        assert logits_to_probs(self.logits, 0.0).tolist() == [[0, 0, 0, 0, 1]]

    def test_temperature_scales(self):
        assert torch.allclose(logits_to_probs(self.logits, 2.0), torch.softmax(self.logits / 2, -1))

    def test_top_k_keeps_k(self):
        probs = logits_to_probs(self.logits, 1.0, top_k=2)
        assert (probs > 0).sum() == 2 and probs[0, 4] > probs[0, 0] > 0

    def test_top_p_keeps_smallest_nucleus(self):
        full = torch.softmax(self.logits, -1)[0]
        probs = logits_to_probs(self.logits, 1.0, top_p=0.8)[0]
        kept = probs > 0
        assert full[kept].sum() >= 0.8 and full[kept].sum() - full[kept].min() < 0.8
        assert torch.allclose(probs.sum(), torch.tensor(1.0))

    def test_shape_preserved(self):
        assert logits_to_probs(torch.randn(3, 4, 7), 0.7, top_k=3, top_p=0.9).shape == (3, 4, 7)


@pytest.mark.parametrize(
    "filters", [dict(temperature=1.0), pytest.param(dict(temperature=0.8, top_k=5), marks=pytest.mark.slow),
                pytest.param(dict(temperature=1.2, top_p=0.85), marks=pytest.mark.slow)],
    ids=["t1", "topk", "topp"],
)
def test_loop_samples_follow_the_target(filters):
    vocab = 8
    target, draft = tiny_pair("llama", noise=0.3, vocab_size=vocab, n_layer=1, hidden=32)
    prompt = torch.tensor([[1, 5, 2]])
    exact = exact_two_token_distribution(target, prompt, **filters)
    gen = torch.Generator().manual_seed(0)
    n = 4_000
    pairs, accepted = [], 0
    for _ in range(n):
        out = speculative_generate(target, draft, prompt, max_new_tokens=3, k=2, generator=gen, **filters)
        a, b = out.sequences[0, 3:5].tolist()
        pairs.append(a * vocab + b)
        accepted += out.stats.accepted[0]
    assert accepted > n * 0.3  # the draft's tokens really were accepted, at both positions
    assert chi2_pvalue(pairs, exact) > P_MIN


def test_seeded_sampling_is_reproducible_and_cache_independent():
    target, draft = tiny_pair("gpt2", noise=0.1, vocab_size=64)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    runs = [
        speculative_generate(target, draft, prompt, max_new_tokens=30, k=3, temperature=1.0, top_p=0.95,
                             use_cache=use_cache, generator=torch.Generator().manual_seed(7)).sequences
        for use_cache in (True, True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    # Same draws in the same order on both paths; the logits differ only by float rounding.
    assert torch.equal(runs[0], runs[2])


def test_sampling_trace_records_p_and_q_of_each_draft():
    target, draft = tiny_pair("gpt2", noise=0.1, vocab_size=64)
    out = speculative_generate(target, draft, torch.tensor([[3, 1, 4]]), max_new_tokens=20, k=3,
                               temperature=1.0, generator=torch.Generator().manual_seed(0))
    for step in out.stats.steps:
        assert len(step.p_draft) == len(step.q_draft) == len(step.draft_tokens)
        assert all(0 <= p <= 1 and 0 < q <= 1 for p, q in zip(step.p_draft, step.q_draft))
    greedy = speculative_generate(target, draft, torch.tensor([[3, 1, 4]]), max_new_tokens=8, k=3, verifier="rejection")
    assert all(q == 1.0 for step in greedy.stats.steps for q in step.q_draft)  # a greedy draft's q is one-hot
