"""Bad input gets a ValueError that names the argument, never an IndexError or a device assert."""

import pytest
import torch

from conftest import cached_pair, prompts
from specdec_lib import autoregressive_generate, logits_to_probs, rejection_verify, speculative_generate
from specdec_lib.testing import tiny_model

PROMPT = torch.tensor([[1, 2, 3]])


@pytest.fixture(scope="module")
def pair():
    return cached_pair("gpt2", "medium")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k "),
        (dict(k=-2), "k "),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=1.0, top_p=0.0), "top_p"),
        (dict(temperature=1.0, top_p=1.5), "top_p"),
        (dict(temperature=1.0, top_k=0), "top_k"),
        (dict(max_new_tokens=300), "maximum of 256 positions"),
        (dict(verifier="greedy", temperature=1.0), "verifier"),
        (dict(verifier=lambda d, t: (0, 0)), "verifier must be"),
        (dict(verifier="argmax"), "verifier must be"),
    ],
)
def test_bad_arguments(pair, kwargs, match):
    args = dict(max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=match):
        speculative_generate(*pair, PROMPT, **args)


@pytest.mark.parametrize(
    "prompt, match",
    [
        (torch.zeros(1, 0, dtype=torch.long), "empty"),
        (torch.tensor([], dtype=torch.long), "empty"),
        (torch.tensor([[[1, 2]]]), "shape"),
        (torch.tensor([[1, 64]]), "vocabulary"),
        (torch.tensor([[-1, 2]]), "vocabulary"),
        (torch.tensor([[0.5, 2.0]]), "integer"),
    ],
)
def test_bad_prompts(pair, prompt, match):
    with pytest.raises(ValueError, match=match):
        speculative_generate(*pair, prompt, max_new_tokens=4)
    with pytest.raises(ValueError, match=match):
        autoregressive_generate(pair[0], prompt, max_new_tokens=4)


def test_zero_new_tokens_returns_the_prompt(pair):
    out = speculative_generate(*pair, PROMPT, max_new_tokens=0)
    assert torch.equal(out.sequences, PROMPT)
    assert out.stats.target_calls == 0


def test_prompt_filling_the_context_exactly_is_fine(pair):
    prompt = torch.zeros(1, 250, dtype=torch.long)
    assert speculative_generate(*pair, prompt, max_new_tokens=6, k=8).sequences.shape == (1, 256)


def test_vocab_mismatch_names_both_sizes(pair):
    other = tiny_model("gpt2", vocab_size=80)
    with pytest.raises(ValueError, match="64.*80"):
        speculative_generate(pair[0], other, PROMPT, max_new_tokens=4)


def test_draft_with_shorter_context_stops_drafting_not_crashing(pair):
    target = pair[0]
    short = tiny_model("gpt2", max_positions=16)
    ref = autoregressive_generate(target, PROMPT, max_new_tokens=30)
    out = speculative_generate(target, short, PROMPT, max_new_tokens=30, k=4)
    assert torch.equal(out.sequences, ref)
    assert out.stats.proposed[-1] == 0


def test_sampling_filters_validated():
    with pytest.raises(ValueError, match="top_k"):
        logits_to_probs(torch.zeros(5), temperature=1.0, top_k=True)
    with pytest.raises(ValueError, match="temperature"):
        logits_to_probs(torch.zeros(5), temperature=float("nan"))


def test_rejection_verify_checks_probability_rows():
    good = torch.full((2, 4), 0.25)
    bad = torch.full((1, 4), 0.3)
    with pytest.raises(ValueError, match="draft_probs"):
        rejection_verify(torch.tensor([1]), bad, good)
    with pytest.raises(ValueError, match="target_probs"):
        rejection_verify(torch.tensor([1]), good[:1], good * 2)
    with pytest.raises(ValueError, match="k\\+1"):
        rejection_verify(torch.tensor([1, 2]), good, good)


def test_sampler_and_cache_objects_replace_the_keywords():
    """speculative_generate and autoregressive_generate take a Sampler and a CacheSpec instead of loose keywords."""
    from specdec_lib import CacheSpec, Sampler

    target, draft = cached_pair("llama", "medium")
    p = prompts()[5]
    loose = dict(temperature=1.0, top_p=0.9, cache_implementation="static")
    objects = dict(cache=CacheSpec(implementation="static"))
    for run in (lambda **kw: speculative_generate(target, draft, p, max_new_tokens=12, k=3, **kw).sequences,
                lambda **kw: autoregressive_generate(target, p, max_new_tokens=12, **kw)):
        a = run(generator=torch.Generator().manual_seed(1), **loose)
        b = run(sampler=Sampler(1.0, top_p=0.9, generator=torch.Generator().manual_seed(1)), **objects)
        assert torch.equal(a, b)
        with pytest.raises(ValueError, match="either sampler= or temperature, not both"):
            run(sampler=Sampler(), temperature=1.0)
        with pytest.raises(ValueError, match="either cache= or cache_implementation, not both"):
            run(cache=CacheSpec(), cache_implementation="static")
