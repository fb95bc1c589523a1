"""Chapter 08's EAGLE-3 head: exactness (greedy, sampling) in every loop, training-time test = drafting, the chunked
corpus (reproducible, resumable), the stored states, and training on them. Tiny random models, CPU."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from specdec_lib import speculative_generate
from specdec_lib.drafters import EagleDrafter
from specdec_lib.loop.drafter import Proposal
from specdec_lib.loop.generate import autoregressive_generate
from specdec_lib.loop.kv_cache import pick_hidden
from specdec_lib.loop.sampling_check import chi2_pvalue
from specdec_lib.models.draft_model import load_draft, save_draft
from specdec_lib.models import eagle3_head as e3
from specdec_lib.models.eagle3_head import Eagle3Head, eagle3_from_target, load_eagle3
from specdec_lib.prompts import GROUNDED_PROMPTS, HELDOUT_PROMPTS
from specdec_lib.testing import exact_two_token_distribution, left_pad, tiny_model
from specdec_lib.training import train_eagle3 as t3
from specdec_lib.training.evaluate import TOP_K
from specdec_lib.training.chunked_corpus import (
    ChunkSpec,
    Row,
    build_chunk,
    build_corpus,
    chunk_path,
    load_chunk,
    read_manifest,
    save_chunk,
)

VOCAB = 48
NEW = 20
P_MIN = 1e-3


@lru_cache(maxsize=None)
def target() -> torch.nn.Module:
    """A tiny Llama with 8 layers, so the head fuses three different ones (2, 4, 5)."""
    return tiny_model("llama", vocab_size=VOCAB, n_layer=8, hidden=32)


@lru_cache(maxsize=None)
def head(scale: float = 0.3) -> Eagle3Head:
    """An untrained EAGLE-3 head for target() over every other id, its weights jittered by `scale`."""
    h = eagle3_from_target(target(), torch.arange(0, VOCAB, 2))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in h.parameters():
            if p is not h.model.embed_tokens.weight:
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return h


def prompts(n: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (1, length), generator=gen) for length in (1, 2, 4, 9, 15)[:n]]


def test_layout_reads_three_layers_and_keeps_vllms_names():
    h = head()
    assert h.target_layers == (2, 4, 5)
    assert h.fc.in_features == 3 * 32 and h.fc.out_features == 32
    names = set(h.state_dict())
    assert {"fc.weight", "norm.weight", "lm_head.weight", "model.layers.0.hidden_norm.weight",
            "model.layers.0.self_attn.q_proj.weight"} <= names
    assert h.model.layers[0].self_attn.q_proj.in_features == 64  # [embedding ; hidden]
    assert not any(n.startswith("model.norm") for n in names)  # the next step reads the hidden before the norm
    tokens, feats = torch.randint(0, VOCAB, (2, 5)), torch.randn(2, 5, 32)
    hidden, sub = h.features_forward(feats, tokens)
    assert hidden.shape == (2, 5, 32) and sub.shape == (2, 5, VOCAB // 2)
    assert torch.isinf(h.full_logits(sub)[..., 1::2]).all()  # ids outside the draft vocabulary get q = 0
    assert h(input_ids=tokens).logits.shape == (2, 5, VOCAB)  # token-only use, for timing


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_output_is_the_targets(k, cache):
    for p in prompts():
        out = speculative_generate(target(), EagleDrafter(head()), p, max_new_tokens=NEW, k=k, cache_implementation=cache)
        expected = target().generate(p, attention_mask=torch.ones_like(p), max_new_tokens=NEW, do_sample=False, pad_token_id=0)
        assert torch.equal(out.sequences, expected), (k, cache, p.shape)


@pytest.mark.parametrize("tree", [(2, 2, 1), "dynamic"])
def test_trees_are_exact(tree):
    for p in prompts():
        out = speculative_generate(target(), head(), p, max_new_tokens=NEW, tree=tree)
        assert torch.equal(out.sequences, autoregressive_generate(target(), p, max_new_tokens=NEW)), (tree, p.shape)


def test_batches_are_exact_row_by_row():
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(0, VOCAB, (n,), generator=gen) for n in (1, 4, 7, 3)]
    ids, mask = left_pad(rows, 0)
    out = speculative_generate(target(), EagleDrafter(head()), ids, attention_mask=mask, max_new_tokens=12, k=3, pad_token_id=0)
    for b, row in enumerate(rows):
        alone = autoregressive_generate(target(), row[None], max_new_tokens=12)[0, len(row):]
        assert torch.equal(out.sequences[b, -12:], alone), b


def test_the_drafter_keeps_the_fused_features_of_the_targets_states():
    drafter, p = EagleDrafter(head()), prompts()[3]
    out = speculative_generate(target(), drafter, p, max_new_tokens=NEW, k=3)
    with torch.no_grad():
        states = pick_hidden(target()(out.sequences, output_hidden_states=True).hidden_states, head().target_layers)[0]
        fused = head().fuse(states)
    n = drafter.features.shape[0]
    assert n >= out.sequences.shape[1] - 2
    torch.testing.assert_close(drafter.features, fused[:n], atol=1e-4, rtol=1e-4)


def _drafting_logits(h: Eagle3Head, features: torch.Tensor, seq: torch.Tensor, j: int, steps: int) -> list[torch.Tensor]:
    """What drafting computes after position j: true features up to j, then the head's own hiddens, fed one by one."""
    cache = DynamicCache(config=h.config)
    hidden, sub = h.features_forward(features[:, : j + 1], seq[:, 1 : j + 2], cache)
    out, hidden = [sub[0, -1]], hidden[:, -1:]
    for i in range(1, steps):
        hidden, sub = h.features_forward(hidden, seq[:, j + 1 + i : j + 2 + i], cache)
        out.append(sub[0, -1])
    return out


def _ttt_matches_drafting(h: Eagle3Head) -> float:
    """The largest difference between training-time-test logits and step-by-step drafting, over positions and steps."""
    seq = torch.randint(0, VOCAB, (1, 14), generator=torch.Generator().manual_seed(3))
    worst = 0.0
    with torch.no_grad():
        states = pick_hidden(target()(seq, output_hidden_states=True).hidden_states, h.target_layers)
        features = h.fuse(states)
        unrolled = [h.sub_logits(x)[0] for x in h.unrolled(features, seq, 4)]
        for j in range(0, 9):
            for i, logits in enumerate(_drafting_logits(h, features, seq, j, 4)):
                worst = max(worst, float((logits - unrolled[i][j]).abs().max()))
    return worst


def test_training_time_test_computes_what_drafting_computes():
    """Step i at position j of the unrolled pass = the (i + 1)-th draft after position j, fed the true tokens."""
    assert _ttt_matches_drafting(head()) < 1e-4


def test_a_wrong_unrolled_mask_is_caught(monkeypatch):
    """Planted bug: later steps attend to every position's earlier-step keys, not only their own; the check fails."""
    def leaky(attn, x, cos, sin, keys, values, causal):
        out = original(attn, x, cos, sin, keys, values, causal)
        return out + 0.1 * out.mean(dim=1, keepdim=True) * (len(keys) > 1)  # information from other positions

    original = e3._unrolled_attention
    monkeypatch.setattr(e3, "_unrolled_attention", leaky)
    assert _ttt_matches_drafting(head()) > 1e-3


def _two_token_pairs(drafter_factory, n: int, seed: int = 0) -> tuple[list[int], int, int]:
    """The first two sampled tokens after prompts()[3], n times, with the head drafting at k = 1."""
    prompt, gen = prompts()[3], torch.Generator().manual_seed(seed)
    pairs, accepted, proposed = [], 0, 0
    for _ in range(n):
        out = speculative_generate(target(), drafter_factory(), prompt, max_new_tokens=3, k=1, temperature=1.0, generator=gen)
        a, b = out.sequences[0, prompt.shape[1] : prompt.shape[1] + 2].tolist()
        pairs.append(a * VOCAB + b)
        accepted, proposed = accepted + sum(out.stats.accepted), proposed + sum(out.stats.proposed)
    return pairs, accepted, proposed


@pytest.mark.slow
def test_sampling_stays_exact_and_a_wrong_q_is_caught():
    """Temperature 1: the first two tokens follow the target's exact joint distribution (chi-square); a drafter that
    reports q shifted by one id (a planted bug) does not."""
    exact = exact_two_token_distribution(target(), prompts()[3], temperature=1.0)
    pairs, accepted, proposed = _two_token_pairs(lambda: EagleDrafter(head()), 3000)
    assert 300 < accepted < proposed - 300  # both outcomes happen often
    assert chi2_pvalue(pairs, exact) > P_MIN

    class WrongQ(EagleDrafter):
        def propose(self, seq, k, sampler):
            p = super().propose(seq, k, sampler)
            return Proposal(p.tokens, None if p.probs is None else p.probs.roll(1, dims=-1))

    bad, _, _ = _two_token_pairs(lambda: WrongQ(head()), 3000)
    assert chi2_pvalue(bad, exact) < 1e-6


def test_save_load_round_trip_and_a_target_without_those_layers(tmp_path):
    h = head()
    save_draft(h, tmp_path / "e3", dtype=torch.float32)
    loaded = load_eagle3(target(), tmp_path / "e3")
    tokens, feats = torch.randint(0, VOCAB, (1, 6)), torch.randn(1, 6, 32)
    torch.testing.assert_close(loaded.features_forward(feats, tokens)[1], h.features_forward(feats, tokens)[1])
    assert loaded.target_layers == h.target_layers
    with pytest.raises(ValueError, match="Eagle3Head"):
        load_draft(target(), tmp_path / "e3")
    shallow = tiny_model("llama", vocab_size=VOCAB, n_layer=2, hidden=32)
    with pytest.raises(ValueError, match="layers"):
        speculative_generate(shallow, EagleDrafter(h), prompts()[2], max_new_tokens=4)


# ---------------------------------------------------------------- the chunked corpus


@lru_cache(maxsize=None)
def smollm2_tokenizer():
    """The embedded target's tokenizer (its chat template included), from the GGUF file; no model weights."""
    from transformers import AutoTokenizer

    from specdec_lib.models.pairs import smollm2_gguf_path

    path = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@lru_cache(maxsize=None)
def word_target() -> torch.nn.Module:
    """A tiny random Llama over the real tokenizer's 49,152 ids (16 wide), to generate corpus chunks in seconds."""
    return tiny_model("llama", vocab_size=49152, n_layer=4, hidden=16, max_positions=1024)


SPEC = ChunkSpec(requests=3, templates=3, code=3, max_new_tokens=6, request_tokens=5, batch_size=4)


def test_a_chunk_is_reproducible_from_its_seed_and_differs_from_the_next():
    tok = smollm2_tokenizer()
    rows = build_chunk(word_target(), tok, 5, SPEC)
    assert rows == build_chunk(word_target(), tok, 5, SPEC)
    assert rows != build_chunk(word_target(), tok, 6, SPEC)
    assert sum(r.kind == 4 for r in rows) == SPEC.requests  # every request is itself a training row
    assert any(not r.greedy for r in rows) and any(r.greedy for r in rows[SPEC.requests:])
    for r in rows:
        assert r.n_prompt < len(r.tokens) <= r.n_prompt + max(SPEC.max_new_tokens, SPEC.request_tokens)
    texts = [tok.decode(r.tokens[: r.n_prompt]) for r in rows]
    assert not any(held in text for held in HELDOUT_PROMPTS + GROUNDED_PROMPTS for text in texts if len(held) > 24)


def test_chunks_store_token_ids_only_and_load_back(tmp_path):
    rows = [Row([1, 2, 3, 65535], 2, 0, True), Row([7] * 9, 1, 5, False)]
    save_chunk(rows, tmp_path / "c.npz")
    assert load_chunk(tmp_path / "c.npz") == rows
    with np.load(tmp_path / "c.npz") as z:
        assert z["tokens"].dtype == np.uint16 and set(z.files) == {"tokens", "lengths", "n_prompt", "kind", "greedy"}
    with pytest.raises(ValueError, match="16 bits"):
        save_chunk([Row([70000], 0, 0, True)], tmp_path / "d.npz")


def test_the_corpus_resumes_and_refuses_another_spec(tmp_path):
    tok, folder = smollm2_tokenizer(), tmp_path / "corpus"
    made = build_corpus(word_target(), tok, folder, range(0, 2), spec=SPEC, progress=False)
    assert [s.chunk for s in made] == [0, 1]
    first = chunk_path(folder, 0).read_bytes()
    again = build_corpus(word_target(), tok, folder, range(0, 3), spec=SPEC, progress=False)
    assert [s.chunk for s in again] == [2]  # chunks 0 and 1 are on disk: only 2 is built
    assert chunk_path(folder, 0).read_bytes() == first
    manifest = read_manifest(folder)
    assert [c["chunk"] for c in manifest["chunks"]] == [0, 1, 2] and manifest["chunks"][0]["made_on"] == "cpu float32"
    with pytest.raises(ValueError, match="another chunk spec"):
        build_corpus(word_target(), tok, folder, range(3, 4), spec=ChunkSpec(batch_size=2), progress=False)


# ---------------------------------------------------------------- stored states and training


@lru_cache(maxsize=None)
def stored(tmp: str) -> dict[int, t3.StoredChunk]:
    """Two chunks of the tiny target's own continuations (raw rows, no tokenizer needed) and their stored states."""
    from pathlib import Path

    corpus, store = Path(tmp) / "corpus", Path(tmp) / "store"
    corpus.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(4)
    for c in range(2):
        rows = []
        for i in range(60):
            p = torch.randint(0, VOCAB, (1, 3), generator=gen)
            seq = autoregressive_generate(target(), p, max_new_tokens=int(torch.randint(6, 20, (1,), generator=gen)))[0]
            rows.append(Row(seq.tolist(), 3, 0, True))
        save_chunk(rows, chunk_path(corpus, c))
    t3.build_features(target(), corpus, store, [0, 1], head().target_layers, progress=False)
    assert t3.stored_chunks(corpus, store) == [0, 1]
    return {c: t3.open_chunk(corpus, store, c) for c in (0, 1)}


@pytest.fixture(scope="module")
def chunks(tmp_path_factory) -> dict[int, t3.StoredChunk]:
    return stored(str(tmp_path_factory.mktemp("eagle3")))


def test_stored_states_are_the_targets_teacher_forced_ones(chunks):
    c = chunks[1]
    row, s = c.rows[7], int(c.starts[7])
    seq = torch.tensor(row.tokens)[None]
    with torch.no_grad():
        out = target()(seq, output_hidden_states=True)
    n = len(row.tokens)
    torch.testing.assert_close(torch.from_numpy(np.array(c.aux[s : s + n])).float(),
                               pick_hidden(out.hidden_states, head().target_layers)[0], atol=2e-2, rtol=2e-3)
    top = out.logits[0].topk(TOP_K)
    assert torch.equal(torch.from_numpy(np.array(c.top_ids[s : s + n, 0])).long(), top.indices[:, 0])
    torch.testing.assert_close(torch.from_numpy(np.array(c.top_logits[s : s + n])).float(), top.values, atol=2e-2, rtol=2e-3)


def test_sparse_labels_renormalise_over_the_draft_vocabulary():
    index = t3.draft_vocab_index(head())
    ids, logits = torch.tensor([[4, 3, 10], [1, 3, 5]]), torch.tensor([[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]])
    where, probs = t3.sparse_labels(ids, logits, index)
    assert where.tolist() == [[2, 0, 5], [0, 0, 0]]  # odd ids are outside (prob 0, index 0)
    torch.testing.assert_close(probs[0], torch.softmax(torch.tensor([2.0, float("-inf"), 0.0]), -1))
    assert probs[1].sum() == 0  # no id in the vocabulary: nothing to learn there


def test_draft_vocabulary_is_the_most_picked_ids(chunks):
    vocab = t3.draft_vocabulary(chunks, 10, VOCAB)
    assert len(vocab) == 10 and torch.equal(vocab, vocab.sort().values)
    assert t3.vocabulary_coverage(chunks, vocab, VOCAB) >= t3.vocabulary_coverage(chunks, torch.arange(10), VOCAB)
    assert t3.vocabulary_coverage(chunks, torch.arange(VOCAB), VOCAB) == 1.0
    with pytest.raises(ValueError, match="distinct"):
        t3.draft_vocabulary(chunks, VOCAB + 1, VOCAB + 1)


def test_validation_rows_are_never_trained_on(chunks):
    train = {(i.chunk, i.row) for i in t3.corpus_items(chunks, validation=False)}
    val = {(i.chunk, i.row) for i in t3.corpus_items(chunks, validation=True)}
    assert val and train and not train & val
    batches = t3.make_batches(t3.corpus_items(chunks, False), 256, torch.Generator().manual_seed(0))
    assert sorted((i.chunk, i.row) for b in batches for i in b) == sorted(train)
    assert all(len(b) * max(i.length for i in b) <= 256 for b in batches)


def test_training_lowers_the_loss_and_stays_exact(chunks):
    h = eagle3_from_target(target(), t3.draft_vocabulary(chunks, 24, VOCAB), seed=1)
    config = t3.Eagle3Config(ttt_steps=3, epochs=6, batch_tokens=512, lr=3e-3, warmup=5, eval_every=20, bf16=False)
    batch = t3.load_batch(t3.corpus_items(chunks, False)[:16], chunks)
    before = t3.batch_loss(h, t3.draft_vocab_index(h), batch, config)[0].item()
    h, log = t3.train_eagle3(target(), h, chunks, config, progress=False)
    after = t3.batch_loss(h, t3.draft_vocab_index(h), batch, config)[0].item()
    assert after < before
    assert log[-1]["kept_step"] == max(log[:-1], key=lambda e: e["val"][0])["step"]
    assert log[-2]["val"][0] > log[0]["val"][0]  # it learned something about held-aside rows
    for p in prompts(4):
        assert torch.equal(speculative_generate(target(), EagleDrafter(h), p, max_new_tokens=NEW, k=3).sequences,
                           autoregressive_generate(target(), p, max_new_tokens=NEW))



def test_the_unrolled_attention_is_dense_attention_under_the_drafting_mask():
    """The fast form (one causal block + one diagonal per earlier step) = softmax attention over every step's keys,
    masked by `unrolled_mask`: the picture chapter 08 draws."""
    attn, length, steps = head().model.layers[0].self_attn, 6, 3
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(1, length, 64, generator=gen) for _ in range(steps)]
    rotary = head().model.rotary_emb
    causal = torch.full((length, length), float("-inf")).triu(1)
    keys, values, fast = [], [], []
    with torch.no_grad():
        for i, x in enumerate(xs):
            cos, sin = rotary(x, torch.arange(length)[None] + i)
            fast.append(e3._unrolled_attention(attn, x, cos, sin, keys, values, causal))
        # Dense: every step's queries, keys and values side by side, one mask.
        q = torch.cat([attn.q_proj(x) for x in xs], 1).view(1, steps * length, -1, attn.head_dim).transpose(1, 2)
        k = torch.cat([attn.k_proj(x) for x in xs], 1).view(1, steps * length, -1, attn.head_dim).transpose(1, 2)
        v = torch.cat([attn.v_proj(x) for x in xs], 1).view(1, steps * length, -1, attn.head_dim).transpose(1, 2)
        cos, sin = rotary(xs[0], (torch.arange(length).repeat(steps) + torch.arange(steps).repeat_interleave(length))[None])
        q, k = e3.apply_rotary_pos_emb(q, k, cos, sin)
        k, v = e3.repeat_kv(k, attn.num_key_value_groups), e3.repeat_kv(v, attn.num_key_value_groups)
        dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=e3.unrolled_mask(length, steps))
        dense = attn.o_proj(dense.transpose(1, 2).reshape(1, steps * length, -1))
    torch.testing.assert_close(torch.cat(fast, 1), dense, atol=1e-5, rtol=1e-4)
    mask = e3.unrolled_mask(length, steps)
    assert mask[2 * length + 3].tolist() == [k <= 3 for k in range(length)] + [k == 3 for k in range(length)] * 2


def test_the_vllm_layout_names_what_llama_eagle3_loads():
    """vLLM's loader maps midlayer.* to its one layer, keeps fc/norm/lm_head, reads d2t as offsets and skips t2d."""
    state, config = e3.vllm_eagle3_layout(head())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5] and config["target_hidden_size"] == 32
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d", "midlayer.hidden_norm.weight",
            "midlayer.input_layernorm.weight", "midlayer.self_attn.q_proj.weight", "midlayer.mlp.down_proj.weight"} <= set(state)
    assert not any(k.startswith("model.") for k in state)  # no embeddings: vLLM shares the target's
    assert state["midlayer.self_attn.k_proj.weight"].shape[1] == 2 * 32  # qkv read [embedding ; hidden]
    ids = head().vocab_ids
    assert torch.equal(torch.arange(len(ids)) + state["d2t"], ids)  # target id = draft id + d2t[draft id]
    assert state["t2d"].sum() == len(ids) and state["t2d"][ids].all()


def test_a_store_of_other_layers_is_refused(tmp_path):
    """Training a head that reads layers (2, 4, 5) on states stored for other layers must fail before it starts."""
    t3.check_store_layers(tmp_path, (2, 4, 5))  # nothing stored yet: any head may start
    (tmp_path / "layers.txt").write_text("2 4 5\n")
    t3.check_store_layers(tmp_path, (2, 4, 5))
    with pytest.raises(ValueError, match=r"holds states of layers \['2', '4', '5'\], not \[1, 3, 5\]"):
        t3.check_store_layers(tmp_path, (1, 3, 5))


def test_training_runs_unwind_every_init_oldest_first():
    """A head trained in three runs (`--init` twice) keeps each earlier record inside the next; a folder name ends the chain."""
    from specdec_lib.training.train_eagle3 import training_runs

    first = {"command": "run 1", "init": None}
    second = {"command": "run 2", "init": first}
    third = {"command": "run 3", "init": second}
    assert [r["command"] for r in training_runs(third)] == ["run 1", "run 2", "run 3"]
    assert [r["command"] for r in training_runs({"command": "eagle-1 style", "init": "smollm2_draft"})] == ["eagle-1 style"]
