"""Chapter 08's on-policy round (training/on_policy.py): the draft writes, the target labels, the draft trains on it."""

from __future__ import annotations

import copy

import torch

from specdec_lib import autoregressive_generate, testing
from specdec_lib.training.corpus import plan_prompts
from specdec_lib.training.on_policy import draft_continuations, on_policy_corpus, relabel
from specdec_lib.training.evaluate import HeldOut, greedy_agreement
from specdec_lib.training.train_draft import TrainConfig, train
from test_draft_model import restricted_pair

VOCAB = 16


def word_tokenizer():
    """Words t0 .. t15, one id each, with a chat template: a real tokenizer class for tiny models."""
    tokenizer = testing.word_tokenizer(VOCAB, pad_token="t0", eos_token="t1")
    tokenizer.chat_template = "{% for m in messages %}t2 {{ m['content'] }} t3 {% endfor %}{% if add_generation_prompt %}t4{% endif %}"
    return tokenizer


def test_relabel_gives_the_targets_top_k_at_each_continuation_token():
    target, _, _ = restricted_pair(vocab=VOCAB)
    gen = torch.Generator().manual_seed(0)
    rows = [(torch.randint(0, VOCAB, (length,), generator=gen), n_prompt) for length, n_prompt in ((9, 3), (5, 2), (12, 7))]
    samples = relabel(target, rows, top_k=4)
    for (tokens, n_prompt), s in zip(rows, samples):
        assert torch.equal(s.tokens, tokens) and s.n_prompt == n_prompt
        with torch.no_grad():  # alone, without padding: logits at position j score token j + 1
            alone = target(input_ids=tokens[None]).logits[0, n_prompt - 1 : -1].topk(4, -1)
        assert s.topk_ids.shape == (len(tokens) - n_prompt, 4)
        assert torch.equal(s.topk_ids, alone.indices)
        torch.testing.assert_close(s.topk_values.float(), alone.values, atol=2e-3, rtol=1e-3)


def test_draft_continuations_are_the_drafts_own_greedy_text():
    target, draft, _ = restricted_pair(vocab=VOCAB)
    tokenizer = word_tokenizer()
    texts = ["t5 t6 t7", "t8 t9 t10 t11 t12", "t13"]
    rows = draft_continuations(draft, tokenizer, texts, greedy=True, max_new_tokens=6, temperature=1.0, max_prompt_tokens=32)
    for text, (tokens, n_prompt) in zip(texts, rows):
        prompt = tokenizer(text, return_tensors="pt").input_ids
        assert n_prompt == prompt.shape[1] and torch.equal(tokens[:n_prompt], prompt[0])  # padding removed
        alone = autoregressive_generate(draft, prompt, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id)[0]
        assert torch.equal(tokens, alone)


def test_an_on_policy_round_raises_agreement_from_where_the_draft_was():
    target, draft, vocab_ids = restricted_pair(vocab=VOCAB, kept=12, noise=0.3)
    tokenizer = word_tokenizer()
    gen = torch.Generator().manual_seed(1)
    prompts = [" ".join(f"t{i}" for i in torch.randint(5, VOCAB, (4,), generator=gen).tolist()) for _ in range(64)]
    samples = on_policy_corpus(target, draft, tokenizer, prompts, batch_size=16, max_new_tokens=16, top_k=6, progress=False)
    plan = plan_prompts(prompts, tokenizer, 0.5, 0)
    assert len(samples) == 64 and {chat for chat, _ in plan if chat.startswith("t2")}  # some went through the template
    assert all(torch.isin(s.tokens[s.n_prompt:], vocab_ids).all() for s in samples)  # the draft wrote them: its ids only
    held_prompts = [torch.tensor([[i, i + 1, i + 2]]) for i in range(4, 13)]
    held = HeldOut([autoregressive_generate(target, p, max_new_tokens=16)[0] for p in held_prompts], [3] * len(held_prompts))
    before = greedy_agreement(draft, held)
    config = TrainConfig(steps=150, batch_size=8, lr=3e-3, warmup=5, eval_every=75)
    tuned, log = train(target, samples, held, config, progress=False, init=copy.deepcopy(draft))
    assert log[0]["agreement"] == before  # it starts where the draft was, not from the target's layers
    assert torch.equal(tuned.vocab_ids.cpu(), vocab_ids)  # and keeps its vocabulary
    assert log[-1]["agreement"] > before + 0.1


def test_generate_corpus_keeps_the_targets_text_and_top_k_logits():
    """Chapter 06's off-policy twin, through the same left-padding and EOS helpers: the target writes and labels."""
    from specdec_lib.training.corpus import generate_corpus

    target, _, _ = restricted_pair(vocab=VOCAB)
    tokenizer = word_tokenizer()
    prompts = ["t5 t6 t7", "t8 t9 t10 t11 t12", "t13 t14", "t6 t6"]
    samples = generate_corpus(target, tokenizer, prompts, minutes=5, batch_size=4, max_new_tokens=8, greedy_share=1.0,
                              top_k=4, progress=False)
    assert len(samples) == 4
    for s, (text, _) in zip(samples, plan_prompts(prompts, tokenizer, 1.0, 0)):
        prompt = tokenizer(text, return_tensors="pt").input_ids
        alone = autoregressive_generate(target, prompt, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id)[0]
        assert s.n_prompt == prompt.shape[1] and torch.equal(s.tokens, alone)  # greedy: the target's own text
        assert torch.equal(s.topk_ids[:, 0], s.tokens[s.n_prompt:])  # and its top-1 at every new token
