"""Greedy speculative decoding reproduces the target's greedy output exactly."""

from functools import lru_cache

import pytest
import torch

from conftest import AGREEMENT, ARCHS, SLIDING_ARCHS, cached_pair, prompts
from specdec_lib import autoregressive_generate, speculative_generate
from specdec_lib.drafters import ModelDrafter

NEW = 24


@lru_cache(maxsize=None)
def reference(arch: str, level: str, cpu_kernels: bool = False) -> list[torch.Tensor]:
    """The target's own greedy continuations of every test prompt (uncached baseline)."""
    target, _ = cached_pair(arch, level, cpu_kernels)
    return [autoregressive_generate(target, p, max_new_tokens=NEW, use_cache=False) for p in prompts()]


@lru_cache(maxsize=None)
def hf_reference(arch: str, level: str, cpu_kernels: bool) -> list[torch.Tensor]:
    """transformers' own greedy generate() on every test prompt."""
    target, _ = cached_pair(arch, level, cpu_kernels)
    return [target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW)
            for p in prompts()]


@pytest.mark.parametrize("arch", ARCHS)
def test_baseline_matches_hf_generate(arch):
    target, _ = cached_pair(arch, "perfect")
    for p, ref in zip(prompts(), reference(arch, "perfect")):
        hf = target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW)
        assert torch.equal(hf, ref)
        assert torch.equal(autoregressive_generate(target, p, max_new_tokens=NEW, use_cache=True), ref)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 8])  # 5 and 7 run in the kernel grid below
@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("use_cache", [pytest.param(False, marks=pytest.mark.slow), True], ids=["uncached", "cached"])
def test_speculative_equals_target_greedy(arch, level, k, use_cache):
    target, draft = cached_pair(arch, level)
    for p, ref in zip(prompts(), reference(arch, level)):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, k=k, use_cache=use_cache)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        assert out.stats.new_tokens == NEW


@pytest.mark.parametrize("k", [1, 2, 3, 4] + [pytest.param(k, marks=pytest.mark.slow) for k in range(5, 9)])
@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", ARCHS)
def test_speculative_equals_target_greedy_with_cpu_kernels(arch, level, k):
    """The same grid, cached, on every other prompt, with the CPU kernels load_pair installs (GPT-2's Conv1D as Linear)."""
    target, draft = cached_pair(arch, level, cpu_kernels=True)
    for p, ref in zip(prompts()[::2], reference(arch, level, cpu_kernels=True)[::2]):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, k=k)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"


@pytest.mark.parametrize("cpu_kernels", [False, True], ids=["stock", "cpu_kernels"])
@pytest.mark.parametrize("k", [1, 2, 3] + [pytest.param(k, marks=pytest.mark.slow) for k in range(4, 7)])
@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", SLIDING_ARCHS)
def test_sliding_window_targets_equal_hf_generate(arch, level, k, cpu_kernels):
    """Targets and drafts whose attention window (8) is shorter than prompt + output: rollback must still be exact."""
    target, draft = cached_pair(arch, level, cpu_kernels)
    refs = hf_reference(arch, level, cpu_kernels)
    assert max(r.shape[1] for r in refs) > 2 * target.config.sliding_window
    for p, ref in zip(prompts()[::2], refs[::2]):  # lengths 1, 3, ..., 19: every other prompt keeps the suite short
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, k=k)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"


@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_model_drafter_equals_passing_the_model(arch):
    """ModelDrafter(draft) is what speculative_generate builds from a plain draft: same tokens, same call counts."""
    target, draft = cached_pair(arch, "medium")
    drafter = ModelDrafter(draft)
    for p in prompts()[::3]:
        for temperature in (0.0, 1.0):
            plain, wrapped = (
                speculative_generate(target, d, p, max_new_tokens=NEW, k=3, temperature=temperature,
                                     generator=torch.Generator().manual_seed(7))
                for d in (draft, drafter)  # the same drafter serves every run: start() resets it
            )
            assert torch.equal(plain.sequences, wrapped.sequences)
            assert (plain.stats.target_calls, plain.stats.draft_calls) == (wrapped.stats.target_calls, wrapped.stats.draft_calls)
            assert plain.stats.proposed == wrapped.stats.proposed and plain.stats.accepted == wrapped.stats.accepted


@pytest.mark.parametrize("arch", ARCHS)
def test_target_calls_shrink_as_agreement_grows(arch):
    calls = {}
    for level in ("low", "medium", "perfect"):
        target, draft = cached_pair(arch, level)
        calls[level] = sum(
            speculative_generate(target, draft, p, max_new_tokens=NEW, k=4).stats.target_calls for p in prompts()
        )
    assert calls["low"] > calls["medium"] > calls["perfect"]
    # A perfect draft: k+1 tokens per target call, up to the last shrunken step.
    assert calls["perfect"] == len(prompts()) * -(-NEW // 5)


def test_sampling_path_at_temperature_zero_is_greedy(arch):
    target, draft = cached_pair(arch, "medium")
    for p, ref in zip(prompts(), reference(arch, "medium")):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, k=3, verifier="rejection")
        assert torch.equal(out.sequences, ref)


def test_stats_are_consistent(arch):
    target, draft = cached_pair(arch, "medium")
    out = speculative_generate(target, draft, prompts()[5], max_new_tokens=NEW, k=4)
    s = out.stats
    assert len(s.proposed) == len(s.accepted) == len(s.steps) == s.target_calls
    assert all(0 <= a <= p <= 4 for p, a in zip(s.proposed, s.accepted))
    assert s.new_tokens == sum(a + 1 for a in s.accepted) == out.sequences.shape[1] - 6
    assert s.acceptance_rate == pytest.approx(sum(s.accepted) / sum(s.proposed))
    assert s.mean_accepted_length == pytest.approx(NEW / s.target_calls)
    drafted = [a for p, a in zip(s.proposed, s.accepted) if p > 0]
    assert s.per_position_acceptance[0] == pytest.approx(sum(a > 0 for a in drafted) / len(drafted))
    assert [st.n_accepted for st in s.steps] == s.accepted
    new = [t for st in s.steps for t in st.new_tokens]
    assert new == out.sequences[0, 6:].tolist()
    # Cached: the draft runs once per drafted token; uncached it's the same count.
    assert s.draft_calls == sum(s.proposed)


def test_never_drafts_past_max_new_tokens():
    target, draft = cached_pair("gpt2", "perfect")
    for new in range(0, 12):
        out = speculative_generate(target, draft, prompts()[3], max_new_tokens=new, k=8)
        assert out.sequences.shape[1] == 4 + new
        assert sum(out.stats.proposed) + len(out.stats.proposed) == new


def test_one_dimensional_prompt_is_accepted():
    target, draft = cached_pair("gpt2", "medium")
    p = prompts()[4]
    a = speculative_generate(target, draft, p[0], max_new_tokens=8).sequences
    assert torch.equal(a, speculative_generate(target, draft, p, max_new_tokens=8).sequences)
    assert a.shape == (1, 13)


@pytest.mark.parametrize("use_cache", [False, True])
def test_eos_in_accepted_prefix_stops_there(arch, use_cache):
    target, draft = cached_pair(arch, "perfect")
    p = prompts()[7]
    ref = reference(arch, "perfect")[7][0, p.shape[1]:].tolist()
    # Pick as EOS a token the target first emits at position i >= 2: with a perfect draft and
    # k=8 it sits inside the first step's accepted prefix.
    i = next(i for i in range(2, 8) if ref[i] not in ref[:i])
    eos = ref[i]
    out = speculative_generate(target, draft, p, max_new_tokens=NEW, k=8, eos_token_id=eos, use_cache=use_cache)
    assert out.sequences[0, p.shape[1]:].tolist() == ref[: i + 1]
    assert out.stats.steps[0].n_accepted > i  # the EOS really was inside the accepted drafts
    assert out.stats.new_tokens == i + 1
    base = autoregressive_generate(target, p, max_new_tokens=NEW, eos_token_id=[eos], use_cache=use_cache)
    assert torch.equal(base, out.sequences)
