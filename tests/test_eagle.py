"""Chapter 08's EAGLE head: shapes, save/load, training, and exactness (greedy and sampling) on tiny pairs."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from specdec_lib import speculative_generate
from specdec_lib.drafters import EagleDrafter
from specdec_lib.models import EagleHead
from specdec_lib.models.eagle_head import eagle_from_draft, load_eagle
from specdec_lib.loop.generate import autoregressive_generate
from specdec_lib.loop.sampling_check import chi2_pvalue
from specdec_lib.testing import exact_two_token_distribution, tiny_model
from specdec_lib.models.draft_model import draft_from_target, load_draft, save_draft
from specdec_lib.training.train_eagle import (
    EagleConfig,
    EagleData,
    eagle_agreement,
    eagle_losses,
    label_rows,
    target_features,
    train_eagle,
)

VOCAB = 48
NEW = 24
P_MIN = 1e-3


@lru_cache(maxsize=None)
def target() -> torch.nn.Module:
    """A 1-layer tiny Llama: a head built from its layer is the target itself until its features are mixed in."""
    return tiny_model("llama", vocab_size=VOCAB, n_layer=1, hidden=32)


@lru_cache(maxsize=None)
def head(feature_noise: float) -> EagleHead:
    """An EAGLE head for target(): its layer, norm and full head, with fc's feature half set to noise of this size.

    0 gives a head that ignores features and agrees with the target on every token; more noise, less agreement.
    """
    h = eagle_from_draft(draft_from_target(target(), [0], torch.arange(VOCAB)))
    with torch.no_grad():
        d = h.config.hidden_size
        h.fc.weight[:, d:] = feature_noise * torch.randn(d, d, generator=torch.Generator().manual_seed(1))
    return h


def prompts(n: int = 6) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (1, length), generator=gen) for length in (1, 2, 3, 5, 9, 14)[:n]]


def test_untrained_head_is_the_token_draft_it_came_from():
    """fc = [I | 0]: whatever the features, the head's logits are its source draft's."""
    draft = draft_from_target(tiny_model("llama", vocab_size=VOCAB, n_layer=2, hidden=32), [1], torch.arange(0, VOCAB, 2))
    h = eagle_from_draft(draft)
    tokens = torch.randint(0, VOCAB, (2, 7))
    predicted, sub = h.features_forward(torch.randn(2, 7, 32), tokens)
    assert predicted.shape == (2, 7, 32) and sub.shape == (2, 7, VOCAB // 2)
    torch.testing.assert_close(h.full_logits(sub), draft(input_ids=tokens).logits)
    torch.testing.assert_close(h(input_ids=tokens).logits, draft(input_ids=tokens).logits)  # token-only use
    assert torch.isinf(h.full_logits(sub)[..., 1::2]).all()  # ids outside its vocabulary get q = 0


def test_features_change_the_prediction_once_fc_reads_them():
    h, tokens = head(1.0), torch.randint(0, VOCAB, (1, 5))
    a = h.features_forward(torch.randn(1, 5, 32), tokens)[1]
    b = h.features_forward(torch.randn(1, 5, 32), tokens)[1]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("noise, k", [(0.0, 3), (0.3, 1), (0.3, 4), (3.0, 2), (3.0, 6)])
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_output_is_the_targets(noise, k, use_cache):
    for p in prompts():
        out = speculative_generate(target(), EagleDrafter(head(noise)), p, max_new_tokens=NEW, k=k, use_cache=use_cache)
        expected = target().generate(p, attention_mask=torch.ones_like(p), max_new_tokens=NEW, do_sample=False,
                                     pad_token_id=0)
        assert torch.equal(out.sequences, expected), (noise, k, p.shape)


def test_acceptance_falls_as_the_features_are_mixed_in_with_noise():
    """noise 0: the head is the target reading the text from its second token on (EAGLE's head sees token 0
    only through the feature of position 0), so it agrees often; noisy features make it agree rarely."""
    seq = prompts()[5]
    with torch.no_grad():
        from_head = head(0.0).full_logits(head(0.0).features_forward(torch.randn(1, 13, 32), seq[:, 1:])[1])
        torch.testing.assert_close(from_head, target()(seq[:, 1:]).logits)
    rates = []
    for noise in (0.0, 3.0):
        out = [speculative_generate(target(), EagleDrafter(head(noise)), p, max_new_tokens=NEW, k=4) for p in prompts()]
        assert all(o.stats.proposed[0] == 0 for o in out)  # no features before the target's first call
        rates.append(sum(sum(o.stats.accepted) for o in out) / sum(sum(o.stats.proposed) for o in out))
    assert rates[1] < rates[0] - 0.3, rates


def test_static_cache_on_the_target_is_exact():
    for p in prompts():
        out = speculative_generate(target(), EagleDrafter(head(0.3)), p, max_new_tokens=NEW, k=3, cache_implementation="static")
        assert torch.equal(out.sequences, autoregressive_generate(target(), p, max_new_tokens=NEW))


@pytest.mark.parametrize("use_cache", [True, False])
def test_drafter_holds_the_targets_features_and_drafts_as_a_full_pass_would(use_cache):
    """After a run the drafter's features are the target's teacher-forced ones, and each step's first draft is the
    head's choice given every true feature: the incremental head cache matches one full pass."""
    drafter, p = EagleDrafter(head(0.3)), prompts()[4]
    firsts = []
    original = drafter.propose

    def propose(seq, k, sampler):
        proposal = original(seq, k, sampler)
        firsts.append((seq.clone(), proposal.tokens[:1].clone()))
        return proposal

    drafter.propose = propose
    out = speculative_generate(target(), drafter, p, max_new_tokens=NEW, k=3, use_cache=use_cache)
    seq = out.sequences
    with torch.no_grad():
        true = target()(seq, output_hidden_states=True).hidden_states[-1][0]
    n = drafter.features.shape[0]
    assert n >= seq.shape[1] - 2
    torch.testing.assert_close(drafter.features, true[:n], atol=1e-4, rtol=1e-4)
    checked = [(before, first) for before, first in firsts[1:] if first.numel()]  # the last step may draft nothing
    assert len(checked) >= 4
    for before, first in checked:
        length = before.shape[1]
        with torch.no_grad():
            sub = head(0.3).features_forward(true[None, : length - 1], before[:, 1:])[1]
        assert first.tolist() == [int(sub[0, -1].argmax())]


@pytest.mark.slow
def test_sampling_stays_exact():
    """At temperature 1 the first two tokens follow the target's exact joint distribution (chi-square)."""
    prompt = prompts()[4]
    exact = exact_two_token_distribution(target(), prompt, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    drafter, pairs, accepted, proposed = EagleDrafter(head(0.3)), [], 0, 0
    for _ in range(4_000):
        # k=1 and 3 new tokens: step 1 has no features (one target token), step 2 drafts one token.
        out = speculative_generate(target(), drafter, prompt, max_new_tokens=3, k=1, temperature=1.0, generator=gen)
        a, b = out.sequences[0, prompt.shape[1] : prompt.shape[1] + 2].tolist()
        pairs.append(a * VOCAB + b)
        accepted, proposed = accepted + sum(out.stats.accepted), proposed + sum(out.stats.proposed)
    assert 400 < accepted < proposed - 400  # both outcomes happen often
    assert chi2_pvalue(pairs, exact) > P_MIN


@lru_cache(maxsize=None)
def corpus() -> EagleData:
    """The target's greedy continuations of random prompts, with its features."""
    gen = torch.Generator().manual_seed(2)
    tokens = [autoregressive_generate(target(), torch.randint(0, VOCAB, (1, 4), generator=gen), max_new_tokens=20)[0]
              for _ in range(40)]
    return EagleData(tokens, target_features(target(), tokens, batch_size=8, progress=False), [4] * len(tokens))


def test_target_features_are_the_last_hidden_states_unpadded():
    data = corpus()
    with torch.no_grad():
        true = target()(data.tokens[0][None], output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(data.features[0].float(), true, atol=2e-3, rtol=2e-3)  # stored as float16


def test_training_lowers_the_loss_keeps_the_best_checkpoint_and_stays_exact():
    data = corpus()
    h = eagle_from_draft(draft_from_target(tiny_model("llama", vocab_size=VOCAB, n_layer=2, hidden=32, seed=3), [0],
                                           torch.arange(VOCAB)))
    tokens = torch.stack([t for t in data.tokens[:8]])
    feats = torch.stack([f.float() for f in data.features[:8]])
    lengths = torch.full((8,), tokens.shape[1])
    before = eagle_losses(h, label_rows(target(), h), tokens, feats, lengths)[0].item()
    config = EagleConfig(steps=40, batch_size=8, lr=3e-3, warmup=5, eval_every=10, n_val=8)
    h, log = train_eagle(target(), h, data, config, progress=False)
    after = eagle_losses(h, label_rows(target(), h), tokens, feats, lengths)[0].item()
    assert after < before
    assert [e["step"] for e in log] == [0, 10, 20, 30, 40]
    best = max(e["val_1"] for e in log)
    val = [len(data.tokens) - 8 + i for i in range(8)]
    kept = eagle_agreement(h, [data.tokens[i] for i in val], [data.features[i] for i in val], [4] * 8)[0]
    assert kept == pytest.approx(best)
    for p in prompts(4):
        assert torch.equal(speculative_generate(target(), EagleDrafter(h), p, max_new_tokens=NEW, k=3).sequences,
                           autoregressive_generate(target(), p, max_new_tokens=NEW))


def test_training_needs_more_sequences_than_it_holds_aside():
    with pytest.raises(ValueError, match="n_val"):
        train_eagle(target(), head(0.0), corpus(), EagleConfig(n_val=40), progress=False)


def test_save_load_round_trip_and_kinds_are_told_apart(tmp_path):
    h = head(0.3)
    save_draft(h, tmp_path / "eagle", dtype=torch.float32)
    loaded = load_eagle(target(), tmp_path / "eagle")
    assert isinstance(loaded, EagleHead)
    tokens, feats = torch.randint(0, VOCAB, (1, 6)), torch.randn(1, 6, 32)
    torch.testing.assert_close(loaded.features_forward(feats, tokens)[1], h.features_forward(feats, tokens)[1])
    with pytest.raises(ValueError, match="EagleHead"):
        load_draft(target(), tmp_path / "eagle")
    save_draft(draft_from_target(target(), [0], torch.arange(VOCAB)), tmp_path / "plain")
    with pytest.raises(ValueError, match="RestrictedVocabLlama"):
        load_eagle(target(), tmp_path / "plain")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TypeError, match="EagleHead"):
        EagleDrafter(target())
    wide = tiny_model("llama", vocab_size=VOCAB, n_layer=1, hidden=64)
    with pytest.raises(ValueError, match="features"):
        speculative_generate(wide, EagleDrafter(head(0.0)), prompts()[2], max_new_tokens=4)


def test_a_bare_head_is_drafted_with_features():
    p = prompts()[3]
    out = speculative_generate(target(), head(0.0), p, max_new_tokens=NEW, k=4)
    assert out.stats.proposed[0] == 0 and sum(out.stats.accepted) > 0  # an EagleDrafter: feature-less first step
    assert torch.equal(out.sequences, autoregressive_generate(target(), p, max_new_tokens=NEW))
