"""The restricted-vocabulary draft (chapter 06): exact greedy and sampling, save/load, and distillation that learns."""

from __future__ import annotations

import pytest
import torch

from specdec_lib import autoregressive_generate, speculative_generate
from specdec_lib.training.corpus import Sample
from specdec_lib.models.draft_model import draft_from_target, load_draft, save_draft
from specdec_lib.loop.sampling_check import chi2_pvalue
from specdec_lib.testing import exact_two_token_distribution, noisy_copy, tiny_model
from specdec_lib.training.evaluate import HeldOut, greedy_agreement
from specdec_lib.training.train_draft import TrainConfig, choose_vocab, make_batch, train, vocab_coverage

P_MIN = 1e-3


def restricted_pair(vocab: int = 16, kept: int = 10, noise: float = 0.3, n_layer: int = 2):
    """A tiny Llama target and a 1-layer draft from it that scores only `kept` of its ids."""
    target = tiny_model("llama", vocab_size=vocab, n_layer=n_layer, hidden=32)
    vocab_ids = torch.arange(vocab - kept, vocab)  # leaves out the lowest ids
    draft = draft_from_target(noisy_copy(target, noise), [0], vocab_ids)
    with torch.no_grad():  # a trained draft keeps the target's input embeddings; only the rest is its own
        draft.model.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
    return target, draft, vocab_ids


def test_logits_outside_the_draft_vocabulary_are_minus_infinity():
    target, draft, vocab_ids = restricted_pair()
    logits = draft(input_ids=torch.tensor([[10, 11, 12]])).logits[0]
    outside = torch.ones(16, dtype=torch.bool)
    outside[vocab_ids] = False
    assert logits.shape == (3, 16)
    assert torch.isneginf(logits[:, outside]).all() and torch.isfinite(logits[:, vocab_ids]).all()
    assert torch.softmax(logits, -1)[:, outside].sum() == 0


def test_save_and_load_round_trip(tmp_path):
    target, draft, _ = restricted_pair()
    save_draft(draft, tmp_path, dtype=torch.float32)
    loaded = load_draft(target, tmp_path)
    ids = torch.tensor([[9, 3, 14, 15, 7]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, draft(input_ids=ids).logits)
    assert loaded.model.embed_tokens.weight.data_ptr() == target.model.embed_tokens.weight.data_ptr()
    assert "model.embed_tokens.weight" not in (tmp_path / "model.safetensors").read_bytes().decode("latin-1")


def test_load_refuses_a_draft_for_another_target(tmp_path):
    _, draft, _ = restricted_pair()
    save_draft(draft, tmp_path)
    with pytest.raises(ValueError, match="another target"):
        load_draft(tiny_model("llama", vocab_size=32, hidden=32), tmp_path)
    with pytest.raises(FileNotFoundError, match="no trained draft"):
        load_draft(draft, tmp_path / "missing")


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_output_equals_target_greedy(use_cache):
    target, draft, _ = restricted_pair()
    for seed in range(5):
        prompt = torch.randint(0, 16, (1, 4), generator=torch.Generator().manual_seed(seed))
        expected = autoregressive_generate(target, prompt, max_new_tokens=24)
        for k in (1, 3, 5):
            out = speculative_generate(target, draft, prompt, k=k, max_new_tokens=24, use_cache=use_cache)
            assert torch.equal(out.sequences, expected)


@pytest.mark.slow
def test_sampling_stays_exact_with_a_restricted_draft():
    """q(x) = 0 for 6 of 16 ids: the residual must still give the target's mass on them."""
    target, draft, vocab_ids = restricted_pair(noise=0.2)
    prompt = torch.tensor([[1, 5, 2]])
    exact = exact_two_token_distribution(target, prompt)
    gen = torch.Generator().manual_seed(0)
    n = 4_000
    pairs, accepted = [], 0
    for _ in range(n):
        out = speculative_generate(target, draft, prompt, max_new_tokens=3, k=2, generator=gen, temperature=1.0)
        a, b = out.sequences[0, 3:5].tolist()
        pairs.append(a * 16 + b)
        accepted += out.stats.accepted[0]
    first = torch.tensor(pairs) // 16
    outside_mass = exact.view(16, 16).sum(1)[: 16 - len(vocab_ids)].sum()
    assert outside_mass > 0.05  # the target does want ids the draft can't propose
    assert (~torch.isin(first, vocab_ids)).any() and accepted > n * 0.2
    assert chi2_pvalue(pairs, exact) > P_MIN


def self_distillation_corpus(target, n: int = 48, length: int = 24, top_k: int = 8, seed: int = 0) -> list[Sample]:
    """The target's own sampled continuations of random prompts, with its top-k logits: a miniature `data` run."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        prompt = torch.randint(0, target.config.vocab_size, (1, 3), generator=gen)
        seq = autoregressive_generate(target, prompt, max_new_tokens=length, temperature=1.0, generator=gen)[0]
        with torch.no_grad():
            logits = target(input_ids=seq[None]).logits[0, 2:-1]
        values, ids = logits.topk(top_k, -1)
        samples.append(Sample(seq, 3, values.half(), ids))
    return samples


def test_choose_vocab_and_coverage():
    target = tiny_model("llama", vocab_size=32, hidden=32)
    samples = self_distillation_corpus(target, n=8)
    ids = choose_vocab(samples, 10)
    assert len(ids) == 10 and torch.equal(ids, ids.sort().values)
    assert 0 < vocab_coverage(samples, ids) <= vocab_coverage(samples, choose_vocab(samples, 32)) == 1.0


def test_make_batch_aligns_targets_with_next_tokens():
    target = tiny_model("llama", vocab_size=32, hidden=32)
    samples = self_distillation_corpus(target, n=2, length=6)
    to_draft = torch.arange(32)  # an unrestricted draft: draft id == target id
    batch = make_batch(samples, to_draft)
    # Position n_prompt - 1 + i carries the target's distribution for continuation token i.
    assert torch.equal(batch.target_ids[0, 2:8, 0], samples[0].topk_ids[:, 0])
    assert batch.target_probs[0, :2].sum() == 0 and batch.target_probs[0, 8:].sum() == 0
    torch.testing.assert_close(batch.target_probs[0, 2:8].sum(-1), torch.ones(6))


def test_make_batch_mixes_corpora_of_different_top_k():
    """A top-1 corpus (hard labels) and a top-6 one train together: narrower rows pad with weight 0."""
    target = tiny_model("llama", vocab_size=32, hidden=32)
    wide, narrow = self_distillation_corpus(target, n=1, length=5, top_k=6), self_distillation_corpus(target, n=1, length=5, top_k=1)
    batch = make_batch(wide + narrow, torch.arange(32))
    assert batch.target_ids.shape[-1] == 6
    assert torch.equal(batch.target_ids[1, 2:7, 0], narrow[0].topk_ids[:, 0])
    torch.testing.assert_close(batch.target_probs[1, 2:7], torch.tensor([[1.0] + [0.0] * 5] * 5))
    torch.testing.assert_close(batch.target_probs[0, 2:7].sum(-1), torch.ones(5))


def test_distillation_raises_held_out_agreement():
    target = tiny_model("llama", vocab_size=32, n_layer=2, hidden=32)
    samples = self_distillation_corpus(target, n=64)
    prompts = [torch.tensor([[i, i + 1, i + 2]]) for i in range(0, 24, 3)]
    held = HeldOut([autoregressive_generate(target, p, max_new_tokens=16)[0] for p in prompts], [3] * len(prompts))
    config = TrainConfig(layers=(0,), vocab_size=24, steps=120, batch_size=8, lr=3e-3, warmup=5, eval_every=60)
    draft, log = train(target, samples, held, config, progress=False)
    assert [entry["step"] for entry in log] == [0, 60, 120]
    assert log[-1]["agreement"] > log[0]["agreement"] + 0.1
    assert log[-1]["agreement"] == greedy_agreement(draft, held)
    assert not draft.model.embed_tokens.weight.requires_grad
