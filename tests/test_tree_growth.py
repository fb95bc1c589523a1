"""Chapter 09, finished: dynamic trees (EAGLE-2) and sampling on trees.

- Growing: a dynamic tree keeps the budget most likely nodes by the draft's path probability, and
  each node's chance is the product of the draft's probabilities along its path; fixed shapes too.
- Greedy: every tree kind on every cache, for the model draft and the EAGLE head, equals `generate`.
- Sampling: chi-square on the target's exact two-token distribution, for fixed and dynamic trees,
  with temperature, top-k and top-p, and a planted bug (the residual not updated between
  siblings) that fails the same check.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

import specdec_lib.loop.tree as tree_module
from conftest import AGREEMENT, ARCHS, SLIDING_ARCHS, cached_pair, prompts
from specdec_lib import speculative_generate
from specdec_lib.drafters import EagleDrafter, ModelDrafter, Proposal, StepCosts
from specdec_lib.loop.sampling_check import chi2_pvalue
from specdec_lib.loop.tree import TokenTree, sample_tree_verdict
from specdec_lib.loop.tree_growth import Candidates, DynamicTree, grow, grow_dynamic
from specdec_lib.models.draft_model import draft_from_target
from specdec_lib.models.eagle_head import eagle_from_draft
from specdec_lib.testing import exact_two_token_distribution, tiny_model, tiny_pair

NEW = 24
P_MIN = 1e-3
DYNAMIC = [DynamicTree(), DynamicTree(depth=3, top_k=2, budget=4), DynamicTree(depth=5, top_k=4, budget=12)]


# --- growing a tree --------------------------------------------------------------------------------

def _fixed_expand(table: torch.Tensor):
    """An expand function whose logits after a node depend only on the node's token: row `token` of `table`."""
    fed_log = []

    def expand(tokens: torch.Tensor, fed: TokenTree, new: int) -> torch.Tensor:
        fed_log.append((fed.size, new))
        return table[tokens[-new:]]

    return expand, fed_log


def _brute_force_chances(table: torch.Tensor, root: torch.Tensor, grown: Candidates) -> list[float]:
    """Each candidate's path probability computed from scratch along its path."""
    probs, root_probs = torch.softmax(table, -1), torch.softmax(root, -1)
    chances = []
    for c in range(len(grown.tokens)):
        path, node = [], c
        while node >= 0:
            path.append(node)
            node = grown.parents[node]
        path = path[::-1]
        chance = float(root_probs[grown.tokens[path[0]]])
        for parent, child in zip(path, path[1:]):
            chance *= float(probs[grown.tokens[parent], grown.tokens[child]])
        chances.append(chance)
    return chances


def test_dynamic_tree_keeps_the_most_likely_nodes_and_expands_the_top_k_per_depth():
    gen = torch.Generator().manual_seed(0)
    vocab = 12
    table, root = 3 * torch.randn(vocab, vocab, generator=gen), 3 * torch.randn(vocab, generator=gen)
    plan = DynamicTree(depth=4, top_k=3, budget=7)
    expand, fed_log = _fixed_expand(table)
    tokens, tree, grown = grow(plan, root, expand)
    # Depth 1 has top_k candidates, every later depth top_k x top_k; each depth but the first fed top_k nodes.
    assert len(grown.tokens) == 3 + 3 * 9 and fed_log == [(3, 3), (6, 3), (9, 3)]
    assert grown.chances == pytest.approx(_brute_force_chances(table, root, grown), rel=1e-5)
    for d in (1, 2, 3):  # the nodes fed at depth d are the top_k most likely of that depth
        level = [c for c in range(len(grown.tokens)) if grown.depths[c] == d]
        best = sorted(level, key=lambda c: -grown.chances[c])[:3]
        assert sorted(c for c in grown.fed if grown.depths[c] == d) == sorted(best)
    # The verified nodes are the budget most likely of all, listed breadth-first, each after its parent.
    chosen = grown.chosen
    assert len(chosen) == tree.size == 7 and tokens.tolist() == [grown.tokens[c] for c in chosen]
    worst_kept = min(grown.chances[c] for c in chosen)
    assert all(grown.chances[c] <= worst_kept + 1e-12 for c in range(len(grown.tokens)) if c not in chosen)
    for i, c in enumerate(chosen):
        p = tree.parents[i]
        assert (p == -1) == (grown.parents[c] == -1) and (p == -1 or chosen[p] == grown.parents[c])
    assert tree.depths == tuple(sorted(tree.depths))


def test_fixed_shape_gives_each_node_its_ranked_guess():
    gen = torch.Generator().manual_seed(1)
    table, root = torch.randn(10, 10, generator=gen), torch.randn(10, generator=gen)
    shape = TokenTree.from_branching((3, 2, 1))
    expand, fed_log = _fixed_expand(table)
    tokens, tree, grown = grow(shape, root, expand)
    assert tree == shape and fed_log == [(3, 3), (9, 6)]  # only nodes with children are fed
    ranks = shape.child_ranks()
    for i, p in enumerate(shape.parents):
        logits = root if p < 0 else table[tokens[p]]
        assert int(tokens[i]) == int(logits.topk(ranks[i] + 1).indices[ranks[i]])


def test_costs_shrink_the_tree_where_verification_is_expensive():
    """With flat verification costs every budgeted node pays; with steep ones the tree keeps only the likeliest, and stops growing."""
    gen = torch.Generator().manual_seed(2)
    table, root = 2 * torch.randn(16, 16, generator=gen), 2 * torch.randn(16, generator=gen)
    flat = StepCosts({n: 1.0 for n in range(1, 14)}, draft=0.01)
    steep = StepCosts({n: float(n) for n in range(1, 14)}, draft=0.3)
    sizes, calls = {}, {}
    for name, costs in (("none", None), ("flat", flat), ("steep", steep)):
        expand, fed_log = _fixed_expand(table)
        grown = grow_dynamic(DynamicTree(depth=4, top_k=3, budget=12, costs=costs), root, expand)
        sizes[name], calls[name] = len(grown.chosen), len(fed_log)
    assert sizes["none"] == sizes["flat"] == 12 and calls["none"] == calls["flat"] == 3
    assert sizes["steep"] < 4 and calls["steep"] < 3


def test_the_model_drafter_grows_what_its_draft_says():
    """Each grown node's chance is the product of the draft's own probabilities along its path; the cache is left as before."""
    target, draft = cached_pair("llama", "medium")
    seq = prompts()[7]
    drafter = ModelDrafter(draft)
    drafter.start(target, seq)
    proposal = drafter.propose_tree(seq, DynamicTree(depth=3, top_k=2, budget=5))
    grown = drafter.last_tree
    assert drafter.calls == 3 and drafter.runner.cached_length == seq.shape[1]
    assert proposal.tree.size == 5 and proposal.tokens.tolist() == [grown.tokens[c] for c in grown.chosen]
    for c in range(len(grown.tokens)):
        path, node = [], c
        while node >= 0:
            path.append(node)
            node = grown.parents[node]
        tokens = [grown.tokens[n] for n in path[::-1]]
        with torch.no_grad():
            probs = torch.softmax(draft(torch.cat([seq, torch.tensor([tokens])], dim=1)).logits[0, -len(tokens) - 1:-1], -1)
            expected = float(torch.prod(probs[torch.arange(len(tokens)), torch.tensor(tokens)]))
        assert grown.chances[c] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("bad", [dict(depth=0), dict(top_k=-1), dict(budget=1.5), dict(depth=True)])
def test_bad_dynamic_settings_raise(bad):
    with pytest.raises(ValueError, match="DynamicTree"):
        DynamicTree(**bad)


def test_bad_tree_arguments_raise():
    target, draft = cached_pair("gpt2", "medium")
    with pytest.raises(ValueError, match="'dynamic'"):
        speculative_generate(target, draft, prompts()[3], max_new_tokens=4, tree="dymanic")
    with pytest.raises(TypeError, match="StepCosts"):
        DynamicTree(costs={1: 1.0})

    class Shapeless(ModelDrafter):  # a drafter that grows a tree but forgets to say which
        def propose_tree(self, seq, tree):
            return Proposal(super().propose_tree(seq, tree).tokens)

    with pytest.raises(ValueError, match="returned no shape"):
        speculative_generate(target, Shapeless(draft), prompts()[3], max_new_tokens=4, tree="dynamic")


# --- greedy: exact on every kind of tree -----------------------------------------------------------

@lru_cache(maxsize=None)
def greedy_reference(arch: str, level: str) -> list[torch.Tensor]:
    """transformers' greedy generate() on every third test prompt."""
    target, _ = cached_pair(arch, level)
    return [target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW)
            for p in prompts()[::3]]


@pytest.mark.parametrize("plan, cache", [(DYNAMIC[0], "dynamic"), (DYNAMIC[1], "static"),
                                         pytest.param(DYNAMIC[2], "dynamic", marks=pytest.mark.slow),
                                         pytest.param(DYNAMIC[0], "static", marks=pytest.mark.slow)],
                         ids=["default-dynamic", "small-static", "wide-dynamic", "default-static"])
@pytest.mark.parametrize("level", AGREEMENT)
@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
def test_dynamic_tree_equals_target_greedy(arch, level, cache, plan):
    """GPT-2, Llama, Mistral (sliding window 8, shorter than prompt + output) and Qwen2 (hybrid), both caches."""
    target, draft = cached_pair(arch, level)
    for p, ref in zip(prompts()[::3], greedy_reference(arch, level)):
        out = speculative_generate(target, draft, p, max_new_tokens=NEW, tree=plan, cache_implementation=cache)
        assert torch.equal(out.sequences, ref), f"prompt length {p.shape[1]}"
        assert out.stats.new_tokens == NEW and all(st.tree is None or st.tree.size <= plan.budget for st in out.stats.steps)


def test_dynamic_tree_with_costs_and_uncached_equal_target_greedy():
    target, draft = cached_pair("qwen2", "medium")
    costs = StepCosts({n: 1.0 + 0.2 * (n - 1) for n in range(1, 10)}, draft=0.1)
    for p, ref in zip(prompts()[::3], greedy_reference("qwen2", "medium")):
        for kwargs in (dict(tree=DynamicTree(costs=costs)), dict(tree="dynamic", use_cache=False)):
            assert torch.equal(speculative_generate(target, draft, p, max_new_tokens=NEW, **kwargs).sequences, ref)


def test_dynamic_tree_needs_fewer_target_calls_than_the_chain_of_its_depth():
    calls = {"chain": 0, "dynamic": 0}
    for arch in ARCHS:
        target, draft = cached_pair(arch, "medium")
        for p in prompts():
            calls["chain"] += speculative_generate(target, draft, p, max_new_tokens=NEW, k=4).stats.target_calls
            calls["dynamic"] += speculative_generate(target, draft, p, max_new_tokens=NEW,
                                                     tree=DynamicTree(depth=4)).stats.target_calls
    assert calls["dynamic"] < calls["chain"]


EAGLE_VOCAB = 48


@lru_cache(maxsize=None)
def eagle_pair(feature_noise: float = 0.05) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A 1-layer tiny Llama target and an EAGLE head built from its layer, its features mixed in with noise."""
    target = tiny_model("llama", vocab_size=EAGLE_VOCAB, n_layer=1, hidden=32)
    head = eagle_from_draft(draft_from_target(target, [0], torch.arange(EAGLE_VOCAB)))
    with torch.no_grad():
        head.fc.weight[:, 32:] = feature_noise * torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    return target, head


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("tree", [(2, 2, 1), (3,), "dynamic", DynamicTree(depth=3, top_k=2, budget=4)], ids=str)
def test_eagle_head_trees_equal_target_greedy(tree, cache):
    """The EAGLE head fills fixed trees and grows dynamic ones in feature space, and keeps the accepted path's features."""
    target, head = eagle_pair()
    gen = torch.Generator().manual_seed(0)
    accepted = 0
    for length in (1, 2, 5, 9, 14):
        p = torch.randint(0, EAGLE_VOCAB, (1, length), generator=gen)
        ref = target.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=NEW)
        drafter = EagleDrafter(head)
        out = speculative_generate(target, drafter, p, max_new_tokens=NEW, tree=tree, cache_implementation=cache)
        assert torch.equal(out.sequences, ref), f"prompt length {length}"
        accepted += sum(out.stats.accepted)
        # The features kept are the target's own at every position, however scattered the accepted nodes were.
        with torch.no_grad():
            true = target(out.sequences[:, :-1], output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(drafter.features, true, rtol=1e-4, atol=1e-4)
    assert accepted > 10  # the head's guesses passed, so accepted paths' features were kept


@torch.inference_mode()
def test_eagle_tree_nodes_are_the_heads_guesses_in_feature_space():
    """Node by node, the head's tree guess equals its chain guess after the node's path (the chain is the reference)."""
    target, head = eagle_pair()
    seq = torch.randint(0, EAGLE_VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    shape = TokenTree.from_branching((2, 2, 1))
    drafter = EagleDrafter(head)
    drafter.start(target, seq)
    out = target(seq, output_hidden_states=True)
    drafter.features = out.hidden_states[-1][0, :-1]  # what the prefill's update leaves: features up to L - 2
    nodes = drafter.propose_tree(seq, shape).tokens
    assert drafter.kv.length == seq.shape[1] - 1 and drafter.calls == shape.depth
    for node in range(shape.size):
        path = shape.path_to(node)
        rank = shape.child_ranks()[node]
        # The chain reference: feed the path's tokens one by one, each with the feature the head predicted before it.
        chain = EagleDrafter(head)
        chain.start(target, seq)
        chain.features = drafter.features
        features, sub = chain._root(seq)
        for parent in path[:-1]:
            predicted, out_sub = head.features_forward(features, nodes[parent].view(1, 1), chain.kv.cache)
            features, sub = predicted[:, -1:], out_sub[0, -1]
        guess = head.full_logits(sub).topk(rank + 1).indices[rank]
        assert int(nodes[node]) == int(guess), f"node {node}"


# --- sampling: lossless on trees -------------------------------------------------------------------

def test_tree_verdict_emits_the_targets_distribution_with_deterministic_and_sampled_siblings():
    """One step on a hand-made tree, vocabulary 8: the first emitted token follows p0, the second p1 after node 0."""
    gen = torch.Generator().manual_seed(0)
    vocab, n = 8, 12_000
    tree = TokenTree((-1, -1, -1, 0, 0, 1))
    target_probs = torch.softmax(2 * torch.randn(tree.size + 1, vocab, generator=gen), -1)
    q = torch.softmax(torch.randn(vocab, generator=gen), -1)
    for deterministic in (True, False):
        first, second = [], []
        for _ in range(n):
            if deterministic:  # top guesses, the same every time: q one-hot
                nodes, probs = torch.tensor([0, 3, 5, 1, 2, 4]), None
            else:  # root's children drawn from q without replacement: child i from q without the earlier ones
                picks = torch.multinomial(q, 3, replacement=False, generator=gen)
                probs = torch.zeros(tree.size, vocab)
                rest = q.clone()
                for i, x in enumerate(picks.tolist()):
                    probs[i] = rest / rest.sum()
                    rest[x] = 0
                probs[3:] = torch.nn.functional.one_hot(torch.tensor([1, 2, 4]), vocab).float()
                nodes = torch.cat([picks, torch.tensor([1, 2, 4])])
            path, nxt, tokens = sample_tree_verdict(nodes, tree, target_probs, probs, gen)
            emitted = [tokens[c] for c in path] + [nxt]
            first.append(emitted[0])
            if path[:1] == [0]:
                second.append(emitted[1])
        assert chi2_pvalue(first, target_probs[0]) > P_MIN
        assert chi2_pvalue(second, target_probs[1]) > P_MIN


def test_tree_verdict_accepts_a_depth_with_the_targets_mass_on_its_guesses():
    """With one-hot guesses, some child of the root passes with probability p0(guesses): the target's mass on them."""
    gen = torch.Generator().manual_seed(1)
    target_probs = torch.softmax(torch.randn(4, 6, generator=gen), -1)
    tree = TokenTree((-1, -1, -1))
    nodes = torch.tensor([2, 0, 5])
    n = 20_000
    passed = sum(bool(sample_tree_verdict(nodes, tree, target_probs, None, gen)[0]) for _ in range(n))
    mass = float(target_probs[0, nodes].sum())
    assert abs(passed / n - mass) < 4 * (mass * (1 - mass) / n) ** 0.5


SAMPLING_VOCAB = 8
DRAWS = 2_000  # 64 cells of two tokens, about 30 expected per cell; the planted bug lands near p = 1e-100


@lru_cache(maxsize=None)
def sampling_pair():
    return tiny_pair("llama", noise=0.3, vocab_size=SAMPLING_VOCAB, n_layer=1, hidden=32)


def sampled_pairs(tree, draws: int, drafter: str = "model", **filters) -> tuple[list[int], int]:
    """The first two sampled tokens of `draws` runs after one prompt, and how many drafts passed."""
    target, draft = sampling_pair()
    if drafter == "eagle":
        target, draft = eagle_sampling_pair()
    prompt = torch.tensor([[1, 5, 2]])
    gen = torch.Generator().manual_seed(0)
    pairs, accepted = [], 0
    for _ in range(draws):
        out = speculative_generate(target, draft, prompt, max_new_tokens=3, tree=tree, generator=gen, **filters)
        a, b = out.sequences[0, 3:5].tolist()
        pairs.append(a * SAMPLING_VOCAB + b)
        accepted += sum(out.stats.accepted)  # an EAGLE head's first step is the prefill: it drafts from the second on
    return pairs, accepted


@lru_cache(maxsize=None)
def eagle_sampling_pair():
    target = tiny_model("llama", vocab_size=SAMPLING_VOCAB, n_layer=1, hidden=32)
    head = eagle_from_draft(draft_from_target(target, [0], torch.arange(SAMPLING_VOCAB)))
    with torch.no_grad():
        head.fc.weight[:, 32:] = 0.3 * torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    return target, head


def exact_pairs(drafter: str = "model", **filters) -> torch.Tensor:
    target = (eagle_sampling_pair() if drafter == "eagle" else sampling_pair())[0]
    return exact_two_token_distribution(target, torch.tensor([[1, 5, 2]]), **filters)


@pytest.mark.parametrize("tree, drafter, filters", [
    ((3, 1), "model", dict(temperature=1.0)),
    (DynamicTree(depth=2, top_k=3, budget=5), "model", dict(temperature=1.0)),
    pytest.param((2, 2), "model", dict(temperature=0.8, top_k=5), marks=pytest.mark.slow),
    pytest.param("dynamic", "model", dict(temperature=1.2, top_p=0.85), marks=pytest.mark.slow),
    pytest.param("dynamic", "eagle", dict(temperature=1.0), marks=pytest.mark.slow),
    pytest.param((3, 1), "eagle", dict(temperature=0.7, top_k=4), marks=pytest.mark.slow),
], ids=["fixed-t1", "dynamic-t1", "fixed-topk", "dynamic-topp", "eagle-dynamic", "eagle-fixed-topk"])
def test_tree_sampling_follows_the_target(tree, drafter, filters):
    pairs, accepted = sampled_pairs(tree, DRAWS, drafter, **filters)
    # Drafts passed in many runs (an EAGLE head drafts from the second step on, so only one depth there).
    assert accepted > (0.15 if drafter == "eagle" else 0.3) * len(pairs)
    assert chi2_pvalue(pairs, exact_pairs(drafter, **filters)) > P_MIN


def test_planted_bug_residual_not_updated_between_siblings_fails(monkeypatch):
    """The same check, with each sibling tested against the target's full distribution instead of what is left of it."""
    monkeypatch.setattr(tree_module, "after_rejection", lambda residual, q: residual)
    pairs, _ = sampled_pairs((3, 1), DRAWS, temperature=1.0)
    assert chi2_pvalue(pairs, exact_pairs(temperature=1.0)) < 1e-6


def test_seeded_tree_sampling_is_reproducible_and_cache_independent():
    target, draft = cached_pair("gpt2", "medium")
    runs = [speculative_generate(target, draft, prompts()[5], max_new_tokens=NEW, tree=tree, temperature=1.0, top_p=0.95,
                                 cache_implementation=cache, generator=torch.Generator().manual_seed(7)).sequences
            for tree in ("dynamic",) for cache in ("dynamic", "dynamic", "static")]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    out = speculative_generate(target, draft, prompts()[5], max_new_tokens=NEW, tree=(2, 2, 1), temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    for step in out.stats.steps[1:]:  # every step records p and q of each node
        assert step.tree is None or len(step.p_draft) == len(step.q_draft) == step.tree.size
