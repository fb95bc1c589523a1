"""Chapter 10: the static cache (rollback by position) and compiled calls reproduce the target exactly."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
import torch._dynamo.utils

from conftest import AGREEMENT, ARCHS, SLIDING_ARCHS, cached_pair, prompts
from specdec_lib import autoregressive_generate, speculative_generate
from specdec_lib.drafters import ModelDrafter, PromptLookupDrafter
from specdec_lib.loop.kv_cache import CacheSpec, ModelRunner, static_cache
from specdec_lib.loop.sampling_check import chi2_pvalue
from specdec_lib.testing import exact_two_token_distribution, tiny_pair

NEW = 24
P_MIN = 1e-3
STATIC = dict(cache_implementation="static")


@lru_cache(maxsize=None)
def reference(arch: str, level: str) -> list[torch.Tensor]:
    """The target's greedy continuations of every test prompt, with the default dynamic cache."""
    target, _ = cached_pair(arch, level)
    return [autoregressive_generate(target, p, max_new_tokens=NEW) for p in prompts()]


@pytest.mark.parametrize("kwargs, message", [
    (dict(implementation="paged"), "must be one of"),
    (dict(compile=True), "compile=True needs cache_implementation='static'"),
    (dict(implementation="static", use_cache=False), "needs use_cache=True"),
])
def test_bad_cache_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CacheSpec(**kwargs)
    target, draft = cached_pair("llama", "perfect")
    names = {"implementation": "cache_implementation"}
    call = {names.get(key, key): value for key, value in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        speculative_generate(target, draft, prompts()[3], max_new_tokens=4, **call)
    with pytest.raises(ValueError, match=message):
        autoregressive_generate(target, prompts()[3], max_new_tokens=4, **call)


def test_compiled_loop_refuses_token_trees():
    """Trees run on the static cache (tests/test_tree.py), but eagerly: their masks change shape every step."""
    target, draft = cached_pair("llama", "perfect")
    with pytest.raises(NotImplementedError, match="eagerly"):
        speculative_generate(target, draft, prompts()[3], max_new_tokens=4, tree=(2, 1), cache_implementation="static",
                             compile=True)


@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_static_baseline_equals_dynamic(arch):
    target, _ = cached_pair(arch, "medium")
    for p, ref in zip(prompts(), reference(arch, "medium")):
        assert torch.equal(autoregressive_generate(target, p, max_new_tokens=NEW, **STATIC), ref)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_static_speculative_equals_target_greedy(arch, level, k):
    """Every fourth prompt (lengths 1-17), K 1-6; the sliding pairs' window (8) is passed long before the end."""
    target, draft = cached_pair(arch, level)
    for p, ref in zip(prompts()[::4], reference(arch, level)[::4]):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, k=k, **STATIC)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        assert out.stats.new_tokens == NEW


@pytest.mark.parametrize("drafter", ["self", "prompt lookup", "threshold + heuristic"])
def test_static_cache_with_every_drafter(drafter):
    """A model drafting for itself gets a cache of its own; model-free and adaptive drafters work unchanged."""
    target, draft = cached_pair("llama", "medium")
    made = {"self": lambda: target, "prompt lookup": PromptLookupDrafter,
            "threshold + heuristic": lambda: ModelDrafter(draft, confidence_threshold=0.4, schedule="heuristic")}
    for p, ref in zip(prompts()[1::3], reference("llama", "medium")[1::3]):
        out = speculative_generate(target, made[drafter](), p, max_new_tokens=NEW, k=4, **STATIC)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
    if drafter == "self":
        assert out.stats.acceptance_rate == 1.0  # its own cache, not the target's: every draft passes


def test_rollback_moves_the_write_position_and_copies_nothing():
    target, _ = cached_pair("llama", "perfect")
    seq = prompts()[9]
    runner = ModelRunner(target, spec=CacheSpec(implementation="static", max_length=seq.shape[1] + 3))
    keys = runner.cache.layers[0].keys if runner.cache.layers[0].is_initialized else None
    full = runner.logits(seq, keep=seq.shape[1])
    address = runner.cache.layers[0].keys.data_ptr()
    assert keys is None or keys.data_ptr() == address
    runner.rollback(4)
    assert runner.cached_length == 4 and int(runner.cache.get_seq_length()) == 4
    assert runner.cache.layers[0].keys.data_ptr() == address  # no copy, no new tensor
    # The stale entries after position 4 are overwritten by the next call and give the same logits.
    assert torch.allclose(runner.logits(seq, keep=seq.shape[1] - 4), full[4:], atol=1e-5)
    assert runner.capacity == 128  # sized in buckets, so prompts of similar lengths share compiled calls
    with pytest.raises(ValueError, match="static cache holds 128 positions"):
        runner.logits(torch.zeros(1, 129, dtype=torch.long))


def test_static_caches_are_reused_per_role_and_grow_when_needed():
    target, _ = cached_pair("gpt2", "perfect")
    first = static_cache(target, 10)
    assert first.layers[0].max_cache_len == 128  # one bucket
    assert static_cache(target, 100) is first  # same tensors run after run: what compiled calls want
    assert static_cache(target, 10, role="draft") is not first
    bigger = static_cache(target, 129)
    assert bigger is not first and bigger.layers[0].max_cache_len == 256  # the next bucket, also the model's limit
    assert static_cache(target, 200) is bigger


@pytest.mark.slow
def test_static_sampling_follows_the_target():
    """Chi-square on the first two sampled tokens, the static cache rolled back after every rejection."""
    vocab = 8
    target, draft = tiny_pair("llama", noise=0.3, vocab_size=vocab, n_layer=1, hidden=32)
    prompt = torch.tensor([[1, 5, 2]])
    exact = exact_two_token_distribution(target, prompt, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    pairs, rejected = [], 0
    for _ in range(4_000):
        out = speculative_generate(target, draft, prompt, max_new_tokens=3, k=2, temperature=1.0, generator=gen, **STATIC)
        a, b = out.sequences[0, 3:5].tolist()
        pairs.append(a * vocab + b)
        rejected += out.stats.accepted[0] < 2
    assert 400 < rejected < 3_600  # both outcomes, acceptance and rollback, happen often
    assert chi2_pvalue(pairs, exact) > P_MIN


def _graphs() -> int:
    """Graphs torch.compile has built so far in this process."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.compile
def test_compiled_static_loop_equals_target_greedy_and_never_recompiles(arch):
    """K 1, 3, 6 on prompts of several lengths; a second pass over them builds no new graph."""
    target, draft = cached_pair(arch, "medium")
    compiled = dict(STATIC, compile=True)
    for sweep in range(2):
        before = _graphs()
        for p, ref in zip(prompts()[::4], reference(arch, "medium")[::4]):
            assert torch.equal(autoregressive_generate(target, p, max_new_tokens=NEW, **compiled), ref)
            for k in (1, 3, 6):
                out = speculative_generate(target, draft, p, max_new_tokens=NEW, k=k, **compiled)
                assert torch.equal(out.sequences, ref), f"k {k}, prompt length {p.shape[1]}"
        if sweep == 1:
            assert _graphs() == before, "a shape changed between runs and forced a recompile"


@pytest.mark.compile
def test_compiled_sampling_draws_what_the_eager_loops_draw():
    """Same seed, same draws: the dynamic, static and static+compiled loops sample the same tokens."""
    target, draft = cached_pair("llama", "medium")
    settings = [dict(), STATIC, dict(STATIC, compile=True)]
    runs = [speculative_generate(target, draft, prompts()[6], max_new_tokens=NEW, k=3, temperature=1.0, top_p=0.95,
                                 generator=torch.Generator().manual_seed(3), **s).sequences for s in settings]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
