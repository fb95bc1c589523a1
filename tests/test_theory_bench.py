"""The speedup formula, the alpha estimate, and the benchmark's bookkeeping (not its timings)."""

import math

import pytest
import torch

from specdec_lib.bench.runs import METHODS, SPEC_CACHED, TARGET_ONLY, benchmark, hf_assisted_generate
from specdec_lib.bench.theory import estimate_alpha, expected_speedup, expected_tokens_per_step, optimal_k
from specdec_lib.bench.timing import verify_cost_ratios
from conftest import cached_pair, prompts


def test_expected_tokens_per_step():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_speedup_formula_and_optimal_k():
    assert expected_speedup(0.8, 4, 0.05) == pytest.approx((1 - 0.8**5) / (0.2 * 1.2))
    assert expected_speedup(0.0, 3, 0.1) < 1  # a useless draft only costs time
    k = optimal_k(0.8, 0.05)
    assert all(expected_speedup(0.8, k, 0.05) >= expected_speedup(0.8, j, 0.05) for j in range(1, 17))
    assert optimal_k(0.9, 0.01) > optimal_k(0.5, 0.01)


def test_estimate_alpha_counts_only_tested_drafts():
    # 3 steps of k=4: accepted 4 (no failure), 1 (then a failure), 0 (a failure).
    assert estimate_alpha([4, 4, 4], [4, 1, 0]) == pytest.approx(5 / 7)
    assert math.isnan(estimate_alpha([], []))


def test_estimate_alpha_recovers_a_known_rate():
    gen = torch.Generator().manual_seed(0)
    accepted = []
    for _ in range(4000):
        n = 0
        while n < 4 and torch.rand(1, generator=gen).item() < 0.7:
            n += 1
        accepted.append(n)
    assert estimate_alpha([4] * len(accepted), accepted) == pytest.approx(0.7, abs=0.02)


def test_hf_assisted_generation_matches_ours_and_restores_the_draft_config():
    target, draft = cached_pair("gpt2", "medium")
    before = draft.generation_config.to_dict()
    p = prompts()[6]
    ref = target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=16)
    assert torch.equal(hf_assisted_generate(target, draft, p, max_new_tokens=16, k=3), ref)
    assert draft.generation_config.to_dict() == before


def test_benchmark_runs_every_method_and_they_agree():
    target, draft = cached_pair("llama", "medium")
    result = benchmark(target, draft, prompts()[3:5], k=3, max_new_tokens=12, repeats=1)
    assert list(result.methods) == list(METHODS)
    assert result.outputs_agree
    assert result.methods[TARGET_ONLY].target_calls == result.methods[TARGET_ONLY].new_tokens == 24
    assert result.methods[SPEC_CACHED].target_calls < 24
    assert 0 <= result.alpha <= 1 and result.c > 0
    assert "measured/predicted" in result.summary() and "tokens/s" in result.table()


def test_verify_cost_ratios_are_relative_to_one_token():
    target, _ = cached_pair("gpt2", "perfect")
    ratios = verify_cost_ratios(target, torch.tensor([[1, 2, 3, 4]]), n_new=(1, 3), n_calls=3)
    assert list(ratios) == [1, 3] and ratios[1] == 1.0 and ratios[3] > 0
    with pytest.raises(ValueError, match="n_new"):
        verify_cost_ratios(target, torch.tensor([[1, 2]]), n_new=(0, 2))


def test_expected_tree_tokens_per_step():
    from specdec_lib.bench.theory import expected_tree_tokens_per_step

    top_b = [0.4, 0.6, 0.7]
    assert expected_tree_tokens_per_step(top_b, (1, 1, 1)) == pytest.approx(expected_tokens_per_step(0.4, 3))
    # (2, 1): depth 1 passes when the target's token is one of two guesses, depth 2 with the one guess after it.
    assert expected_tree_tokens_per_step(top_b, (2, 1)) == pytest.approx(1 + 0.6 + 0.6 * 0.4)
    assert expected_tree_tokens_per_step(top_b, (3, 2, 1)) == pytest.approx(1 + 0.7 + 0.7 * 0.6 + 0.7 * 0.6 * 0.4)
    with pytest.raises(ValueError, match="top-b"):
        expected_tree_tokens_per_step(top_b, (4,))


@pytest.mark.parametrize("drafter", ["model", "prompt lookup"])
def test_benchmark_stops_every_method_at_eos(drafter):
    """With eos_token_id (a chat model's end of turn) every method, transformers' too, stops right after that token."""
    from specdec_lib.drafters import PromptLookupDrafter

    target, draft = cached_pair("llama", "medium")
    p = prompts()[3]
    free = target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=12)[0, p.shape[1]:]
    eos = int(free[5])  # a token the target writes 6th (or earlier, if it repeats)
    stop = free.tolist().index(eos) + 1
    result = benchmark(target, PromptLookupDrafter() if drafter == "prompt lookup" else draft, [p], k=3,
                       max_new_tokens=12, repeats=1, eos_token_id=eos)
    assert len(result.methods) == 4 and result.outputs_agree
    for name, method in result.methods.items():
        assert method.new_tokens == stop, name
        assert torch.equal(method.outputs[0][0, p.shape[1]:], free[:stop]), name
