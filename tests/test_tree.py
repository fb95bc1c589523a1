"""Token trees (chapter 09): tree shapes, the 4D mask, path selection, the cache gather, and exactness."""

from functools import lru_cache

import pytest
import torch

from conftest import AGREEMENT, ARCHS, SLIDING_ARCHS, cached_pair, prompts
from specdec_lib import ModelRunner, autoregressive_generate, speculative_generate
from specdec_lib.drafters import ModelDrafter, PromptLookupDrafter
from specdec_lib.loop.tree import (
    TokenTree,
    allowed_attention,
    greedy_tree_path,
    keep_path_in_cache,
    tree_attention_inputs,
    tree_forward,
)

NEW = 24
TREES = [(2, 2, 1, 1), (3,), (1, 3, 2), pytest.param((4, 2, 1, 1, 1, 1), marks=pytest.mark.slow)]

# A hand-made tree:       root
#                        /     \
#                      0         1
#                    /   \       |
#                   2     3      4
#                   |
#                   5
HAND = TokenTree((-1, -1, 0, 0, 1, 2))


def test_from_branching_numbers_nodes_breadth_first():
    tree = TokenTree.from_branching((2, 2, 1, 1))
    assert tree.size == 14 and tree.depth == 4
    assert tree.parents == (-1, -1, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert tree.depths == (1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)
    assert list(tree.level(2)) == [2, 3, 4, 5]
    assert tree.child_ranks() == (0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    assert tree.truncated(2) == TokenTree((-1, -1, 0, 0, 1, 1))
    assert tree.truncated(0) is None and tree.truncated(9) == tree
    assert TokenTree.from_branching((1, 1, 1)).parents == (-1, 0, 1)


def test_hand_made_tree_ancestors_and_paths():
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],
        [0, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(HAND.ancestors(), expected)
    assert HAND.depths == (1, 1, 2, 2, 2, 3)
    assert HAND.path_to(5) == [0, 2, 5] and HAND.path_to(4) == [1, 4]


def test_mask_over_committed_text_and_tree():
    """Two committed tokens, both fed (no cache): causal for them, each node sees them and its ancestors."""
    allowed = allowed_attention(HAND, committed=2, rows=8, columns=8)
    c0, c1 = [1, 0], [1, 1]
    expected = torch.tensor([
        c0 + [0, 0, 0, 0, 0, 0],
        c1 + [0, 0, 0, 0, 0, 0],
        c1 + [1, 0, 0, 0, 0, 0],
        c1 + [0, 1, 0, 0, 0, 0],
        c1 + [1, 0, 1, 0, 0, 0],
        c1 + [1, 0, 0, 1, 0, 0],
        c1 + [0, 1, 0, 0, 1, 0],
        c1 + [1, 0, 1, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    # With the committed text cached, only the nodes are fed: the last 6 rows.
    assert torch.equal(allowed_attention(HAND, committed=2, rows=6, columns=8), expected[2:])


def test_mask_sliding_window_counts_positions_by_depth():
    """Node 5 sits at position committed - 1 + 3; with a window of 3 it sees keys at positions > its - 3."""
    committed = 4  # positions 0..3; nodes at 4, 4, 5, 5, 5, 6
    allowed = allowed_attention(HAND, committed, rows=HAND.size, columns=committed + HAND.size, window=3)
    node5 = allowed[5].tolist()
    # Position 6 sees positions 4, 5, 6: none of the committed text, its ancestors 0 and 2 and itself.
    assert node5 == [False] * 4 + [True, False, True, False, False, True]
    node0 = allowed[0].tolist()  # position 4 sees committed positions 2 and 3, and itself
    assert node0 == [False, False, True, True, True] + [False] * 5


def test_hybrid_models_get_one_mask_per_layer_type():
    target, _ = cached_pair("qwen2", "perfect")
    positions, mask = tree_attention_inputs(target, None, 3, HAND)
    assert set(mask) == {"full_attention", "sliding_attention"}
    assert positions.tolist() == [[0, 1, 2, 3, 3, 4, 4, 4, 5]]
    llama, _ = cached_pair("llama", "perfect")
    _, single = tree_attention_inputs(llama, None, 3, HAND)
    assert single.shape == (1, 1, 9, 9) and single.dtype == llama.dtype


@pytest.mark.parametrize("bad", [(), (0,), (2, -1), (2, 1.5), (True,), "22", None, 3])
def test_bad_branching_raises(bad):
    with pytest.raises(ValueError, match="tree|branching"):
        TokenTree.from_branching(bad)


@pytest.mark.parametrize("parents", [(0,), (-1, 1), (-1, 5), (-1, 0, -1), (-1, "0")])
def test_bad_parents_raise(parents):
    with pytest.raises(ValueError):
        TokenTree(parents)


def test_bad_tree_argument_of_the_loop_raises():
    target, draft = cached_pair("gpt2", "medium")
    for bad in [(), (2, 0), "2,2"]:
        with pytest.raises(ValueError, match="tree|branching"):
            speculative_generate(target, draft, prompts()[3], max_new_tokens=4, tree=bad)


def _one_hot_logits(choices: list[int], vocab: int = 10) -> torch.Tensor:
    """Logits whose argmax in row r is choices[r]."""
    return torch.nn.functional.one_hot(torch.tensor(choices), vocab).float()


def test_greedy_path_follows_the_targets_argmax_down_the_tree():
    nodes = torch.tensor([5, 6, 7, 8, 9, 3])  # HAND's node tokens
    # Root wants 5 (node 0); after node 0 it wants 7 (node 2); after node 2 it wants 3 (node 5); then 1.
    logits = _one_hot_logits([5, 7, 0, 3, 0, 0, 1])
    assert greedy_tree_path(nodes, HAND, logits) == ([0, 2, 5], 1)
    # Root wants 6 (node 1), then 9 (node 4), a leaf: its row gives the bonus token 2.
    logits = _one_hot_logits([6, 0, 9, 0, 0, 2, 0])
    assert greedy_tree_path(nodes, HAND, logits) == ([1, 4], 2)
    # Root wants 4: no child holds it, nothing is accepted and 4 is the correction.
    assert greedy_tree_path(nodes, HAND, _one_hot_logits([4, 0, 0, 0, 0, 0, 0])) == ([], 4)
    # The second child of node 0 (node 3) when the target wants 8 after node 0.
    assert greedy_tree_path(nodes, HAND, _one_hot_logits([5, 8, 0, 0, 7, 0, 0])) == ([0, 3], 7)
    with pytest.raises(ValueError, match="shape"):
        greedy_tree_path(nodes, HAND, _one_hot_logits([5, 8]))


@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_cache_after_gather_equals_feeding_the_path_in_order(arch):
    """Keys and values kept for the accepted path equal those of a cache fed committed text + the path as a chain."""
    target, _ = cached_pair(arch, "perfect")
    seq = prompts()[18]  # 19 tokens: beyond the sliding window (8)
    tree = TokenTree.from_branching((2, 2, 1))
    gen = torch.Generator().manual_seed(0)
    nodes = torch.randint(0, target.config.vocab_size, (tree.size,), generator=gen)
    for path in ([], [1], [0, 3], [1, 5, 9]):
        runner = ModelRunner(target)
        runner.logits(seq[:, :-1])
        tree_forward(runner, seq, nodes, tree, keep=tree.size + 1)
        keep_path_in_cache(runner.cache, tree.size, path)
        chain = ModelRunner(target)
        chain.logits(torch.cat([seq, nodes[path].view(1, -1)], dim=1))
        runner.rollback(runner.cached_length)  # crop(0): what the loop's rollback does to sliding layers
        chain.rollback(chain.cached_length)
        assert runner.cached_length == chain.cached_length == seq.shape[1] + len(path)
        for a, b in zip(runner.cache.layers, chain.cache.layers):
            assert a.keys.shape == b.keys.shape
            torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_tree_logits_equal_each_paths_chain_logits(arch):
    """Scoring every node at once gives, for each node, the logits the target gives after its path fed as a chain."""
    target, _ = cached_pair(arch, "perfect")
    seq = prompts()[12]
    tree = TokenTree.from_branching((2, 2, 1))
    nodes = torch.randint(0, target.config.vocab_size, (tree.size,), generator=torch.Generator().manual_seed(1))
    for use_cache in (False, True):
        runner = ModelRunner(target, use_cache)
        if use_cache:
            runner.logits(seq[:, :-1])
        logits = tree_forward(runner, seq, nodes, tree, keep=tree.size + 1)[0]
        for node in range(tree.size):
            chain = torch.cat([seq, nodes[tree.path_to(node)].view(1, -1)], dim=1)
            torch.testing.assert_close(logits[node + 1], target(chain).logits[0, -1], rtol=1e-4, atol=1e-4)


def test_draft_fills_each_node_with_its_ranked_guess():
    """Node i holds the draft's child_ranks[i]-th most likely token after its path."""
    target, draft = cached_pair("llama", "medium")
    seq = prompts()[6]
    tree = TokenTree.from_branching((3, 2, 1))
    drafter = ModelDrafter(draft)
    drafter.start(target, seq)
    nodes = drafter.propose_tree(seq, tree).tokens
    assert drafter.calls == tree.depth and drafter.runner.cached_length == seq.shape[1]
    for node, rank in enumerate(tree.child_ranks()):
        parents = nodes[tree.path_to(node)[:-1]]
        logits = draft(torch.cat([seq, parents.view(1, -1)], dim=1)).logits[0, -1]
        assert int(nodes[node]) == int(logits.topk(rank + 1).indices[rank])


@lru_cache(maxsize=None)
def greedy_reference(arch: str, level: str) -> list[torch.Tensor]:
    """transformers' greedy generate() on every other test prompt."""
    target, _ = cached_pair(arch, level)
    return [target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW)
            for p in prompts()[::2]]


@pytest.mark.parametrize("tree", TREES, ids=str)
@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_tree_equals_target_greedy(arch, level, tree):
    """Cached, on GPT-2, Llama, Mistral (sliding window 8, shorter than prompt + output) and Qwen2 (hybrid)."""
    target, draft = cached_pair(arch, level)
    for p, ref in zip(prompts()[::2], greedy_reference(arch, level)):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, tree=tree)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        s = out.stats
        assert s.new_tokens == NEW == sum(len(st.new_tokens) for st in s.steps)
        assert [t for st in s.steps for t in st.new_tokens] == out.sequences[0, p.shape[1]:].tolist()
        assert all(0 <= a <= d <= len(tree) for d, a in zip(s.proposed, s.accepted))


@pytest.mark.parametrize("tree", [(2, 2, 1, 1), pytest.param((3,), marks=pytest.mark.slow)], ids=str)
@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_tree_on_static_cache_equals_target_greedy(arch, level, tree):
    """The static cache (chapter 10) rolls a tree back by position and gathers its path in place: still exact."""
    target, draft = cached_pair(arch, level)
    for p, ref in zip(prompts()[::2], greedy_reference(arch, level)):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, tree=tree, cache_implementation="static")
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        dynamic = speculative_generate(target, draft, p, max_new_tokens=NEW, tree=tree)
        assert [st.path for st in out.stats.steps] == [st.path for st in dynamic.stats.steps]


@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_static_and_dynamic_caches_keep_the_same_path(arch):
    """ModelRunner.keep on both kinds: after a tree call and the gather, the cached path equals feeding it in order."""
    from specdec_lib import CacheSpec

    target, draft = cached_pair(arch, "medium")
    seq = prompts()[9]
    nodes = ModelDrafter(draft)
    nodes.start(target, seq)
    tree = TokenTree.from_branching((2, 2, 1))
    tokens = nodes.propose_tree(seq, tree).tokens
    path = tree.path_to(tree.size - 1)  # the deepest last node: off the first branch, so the gather moves entries
    caches = []
    for spec in (CacheSpec(), CacheSpec(implementation="static", max_length=64)):
        runner = ModelRunner(target, spec=spec)
        runner.logits(seq[:, :-1])
        tree_forward(runner, seq, tokens, tree, keep=1)
        runner.keep(tree.size, path)
        assert runner.cached_length == seq.shape[1] + len(path)
        caches.append([(layer.keys[:, :, : runner.cached_length], layer.values[:, :, : runner.cached_length])
                       for layer in runner.cache.layers])
    reference = ModelRunner(target, spec=CacheSpec(implementation="static", max_length=64), role="reference")
    reference.logits(torch.cat([seq, tokens[path].view(1, -1)], dim=1))
    expected = [(layer.keys[:, :, : reference.cached_length], layer.values[:, :, : reference.cached_length])
                for layer in reference.cache.layers]
    for layers in caches:
        for (keys, values), (k_ref, v_ref) in zip(layers, expected):
            if keys.shape == k_ref.shape:  # a dynamic sliding-window layer holds its window only: compared by the exactness tests
                torch.testing.assert_close(keys, k_ref, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(values, v_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_uncached_tree_equals_target_greedy(arch, level):
    """Without caches every call re-feeds the whole sequence and the tree; the same mask must hold."""
    target, draft = cached_pair(arch, level)
    for p, ref in zip(prompts()[::2], greedy_reference(arch, level)):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, tree=(2, 2, 1, 1), use_cache=False)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"


@pytest.mark.parametrize("arch", ARCHS)
def test_a_one_wide_tree_is_the_chain(arch):
    """tree=(1,)*k drafts and accepts exactly what the chain with k does."""
    target, draft = cached_pair(arch, "medium")
    for p in prompts()[::4]:
        for k in (1, 3):
            chain = speculative_generate(target, draft, p, max_new_tokens=NEW, k=k)
            tree = speculative_generate(target, draft, p, max_new_tokens=NEW, tree=(1,) * k)
            assert torch.equal(chain.sequences, tree.sequences)
            assert chain.stats.accepted == tree.stats.accepted and chain.stats.proposed == tree.stats.proposed
            assert (chain.stats.target_calls, chain.stats.draft_calls) == (tree.stats.target_calls, tree.stats.draft_calls)


def test_wider_trees_need_fewer_target_calls():
    """With a middling draft, the draft's second guesses rescue steps: fewer target calls than the chain of equal depth."""
    calls = {}
    for tree in [(1, 1, 1, 1), (2, 2, 1, 1), (4, 2, 1, 1)]:
        calls[tree] = 0
        for arch in ARCHS:
            target, draft = cached_pair(arch, "medium")
            calls[tree] += sum(speculative_generate(target, draft, p, max_new_tokens=NEW, tree=tree).stats.target_calls
                               for p in prompts())
    assert calls[(1, 1, 1, 1)] > calls[(2, 2, 1, 1)] > calls[(4, 2, 1, 1)]


def test_tree_never_drafts_past_max_new_tokens_and_stops_at_eos():
    target, draft = cached_pair("gpt2", "perfect")
    p = prompts()[3]
    ref = autoregressive_generate(target, p, max_new_tokens=NEW)
    for new in range(0, 10):
        out = speculative_generate(target, draft, p, max_new_tokens=new, tree=(2, 2, 1, 1))
        assert torch.equal(out.sequences, ref[:, : 4 + new])
        assert all(d <= new for d in out.stats.proposed)
    tokens = ref[0, 4:].tolist()
    i = next(i for i in range(2, 8) if tokens[i] not in tokens[:i])
    out = speculative_generate(target, draft, p, max_new_tokens=NEW, tree=(2, 2, 1, 1, 1, 1, 1, 1), eos_token_id=tokens[i])
    assert out.sequences[0, 4:].tolist() == tokens[: i + 1] and out.stats.new_tokens == i + 1


def test_tree_refuses_drafters_without_trees():
    """Sampling on trees is tested in test_tree_growth; a drafter that can't fill one gets a clear error."""
    target, draft = cached_pair("gpt2", "medium")
    with pytest.raises(ValueError, match="propose_tree"):
        speculative_generate(target, PromptLookupDrafter(), prompts()[3], max_new_tokens=4, tree=(2, 1))


def test_tree_step_records():
    target, draft = cached_pair("llama", "medium")
    out = speculative_generate(target, draft, prompts()[9], max_new_tokens=NEW, tree=(2, 2, 1, 1))
    for step in out.stats.steps:
        assert step.tree is not None and len(step.draft_tokens) == step.tree.size
        assert step.path == (step.tree.path_to(step.path[-1]) if step.path else [])
        assert step.bonus == (len(step.path) == step.tree.depth)
    assert any(step.path and step.path[0] == 1 for step in out.stats.steps), "a second guess was accepted at least once"


def test_attention_kernels_without_custom_masks_are_refused():
    import copy

    target, _ = cached_pair("llama", "perfect")
    flash = copy.deepcopy(target)
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="eager or sdpa"):
        tree_attention_inputs(flash, None, 3, HAND)
