"""The exercise checks: a right answer passes, each planted wrong one fails with its hint, and no failure shows the answer."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from specdec_lib.bench.theory import expected_tokens_per_step, optimal_k
from specdec_lib.drafters.model import ModelDrafter
from specdec_lib.drafters.prompt_lookup import PromptLookupDrafter
from specdec_lib.exercises import EXERCISES, check, listing
from specdec_lib.exercises.__main__ import main
from specdec_lib.exercises.ch04 import kv_cache_bytes
from specdec_lib.exercises.ch09 import node_count, tree_shapes
from specdec_lib.loop import DrafterBase, greedy_verify
from specdec_lib.loop.sampling import acceptance_probability
from specdec_lib.models.eagle3_head import unrolled_mask
from specdec_lib.testing import tiny_model

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def failed(id: str, answer, **context) -> str:
    """The message of a check that must fail."""
    result = check(id, answer, quiet=True, **context)
    assert not result, f"{id} passed a wrong answer"
    return result.message


def test_every_check_is_listed_with_its_usage(capsys):
    assert len(EXERCISES) >= 9
    text = listing()
    assert all(f"check(\"{id}\"" in text for id in EXERCISES)
    main(["--list"])
    assert "chapter 07" in capsys.readouterr().out
    with pytest.raises(ValueError, match="checked exercises"):
        check("99.9", 1)
    with pytest.raises(TypeError, match='check\\("09.1", best_shape, top_b=top_b\\)'):
        check("09.1", (2, 1))  # top_b missing


def test_result_is_truthy_and_printed(capsys):
    assert check("02.3", 2)
    assert capsys.readouterr().out.startswith("✓ 02.3")
    assert not check("02.3", 3)
    out = capsys.readouterr().out
    assert out.startswith("✗ 02.3") and "hint:" in out


def test_01_5_verify():
    assert check("01.5", greedy_verify, quiet=True)

    def keeps_going(drafts, logits):  # the 01.4 trap: counts every match, not the matching prefix
        choices = logits.argmax(-1)
        n = int((drafts == choices[: len(drafts)]).sum())
        return n, int(choices[n])

    assert "after a rejected one" in failed("01.5", keeps_going)

    def no_bonus(drafts, logits):
        n, nxt = greedy_verify(drafts, logits)
        return n, nxt if n < len(drafts) else -1

    assert "one more token" in failed("01.5", no_bonus)
    assert "raised IndexError" in failed("01.5", lambda d, l: (0, int(l[len(d) + 5].argmax())))
    assert "return a pair" in failed("01.5", lambda d, l: 3)


def test_02_numbers():
    assert check("02.2", 4.7, quiet=True) and check("02.2", 5, quiet=True)
    assert "more than one call" in failed("02.2", 6)
    assert "too few" in failed("02.2", 4.0)
    assert "not a number" in failed("02.2", "five")


def test_03_2_one_minus_tv():
    assert check("03.2", lambda p, q: acceptance_probability(p, q), quiet=True)
    assert "half the L1" in failed("03.2", lambda p, q: 1 - float((p - q).abs().sum()))  # TV without the half
    assert "raised" in failed("03.2", lambda p, q: p @ q[:3])


def test_04_2_optimal_k():
    alpha, c = 0.37, 0.09
    assert check("04.2", optimal_k(alpha, c), alpha=alpha, c=c, quiet=True)
    assert "another K" in failed("04.2", optimal_k(alpha, c) + 3, alpha=alpha, c=c)
    assert "whole number" in failed("04.2", 2.5, alpha=alpha, c=c)


def test_04_4_kv_cache_size_and_its_hints():
    model = tiny_model("llama", n_layer=3, hidden=64, n_head=4)  # 2 kv heads of 16: grouped-query attention
    size = kv_cache_bytes(model, 8192)
    assert size == 3 * 2 * 2 * 16 * 8192 * 4
    assert check("04.4", size / 1e6, model=model, quiet=True) and check("04.4", size / 2**20, model=model, quiet=True)
    assert "keys and values" in failed("04.4", size / 2e6, model=model)
    assert "grouped-query" in failed("04.4", size * 2 / 1e6, model=model)
    assert "every layer" in failed("04.4", size / 3e6, model=model)
    message = failed("04.4", size * 1.3 / 1e6, model=model)
    assert "too large" in message and f"{size / 1e6:.1f}" not in message and f"{size / 2**20:.1f}" not in message


def test_05_3_speedup_with_verify():
    assert check("05.3", lambda a, k, c, v: expected_tokens_per_step(a, k) / (k * c + v), quiet=True)
    message = failed("05.3", lambda a, k, c, v: expected_tokens_per_step(a, k) / (k * c + 1))  # v ignored
    assert "k draft calls and one verification" in message
    assert "expected_speedup" in failed("05.3", lambda a, k, c, v: a * k / (k * c + v))


class Hybrid(DrafterBase):
    """Exercise 07.2's answer: lookup first, the draft model when lookup finds nothing."""

    def __init__(self, draft, forward_update: bool = True):
        self.lookup, self.fallback, self.model = PromptLookupDrafter(), ModelDrafter(draft), draft
        self.forward_update = forward_update

    def start(self, target, input_ids, **kwargs):
        self.fallback.start(target, input_ids, **kwargs)

    def propose(self, seq, k, sampler):
        proposal = self.lookup.propose(seq, k, sampler)
        return proposal if proposal.tokens.numel() else self.fallback.propose(seq, k, sampler)

    def update(self, seq, record, verified):
        if self.forward_update:
            self.fallback.update(seq, record, verified)


def test_07_2_hybrid_drafter():
    assert check("07.2", Hybrid, quiet=True)

    class ModelFirst(Hybrid):
        def propose(self, seq, k, sampler):
            return self.fallback.propose(seq, k, sampler)

    assert "lookup" in failed("07.2", ModelFirst)

    class LookupOnly(Hybrid):
        def propose(self, seq, k, sampler):
            return self.lookup.propose(seq, k, sampler)

    assert "draft model's tokens" in failed("07.2", LookupOnly)
    assert "forgets the rejected drafts" in failed("07.2", lambda draft: Hybrid(draft, forward_update=False))
    assert "not a drafter" in failed("07.2", lambda draft: object())


def test_08_4_unrolled_mask():
    assert check("08.4", unrolled_mask, quiet=True)

    def leaky(length, steps):  # a later step also reads its earlier drafts at other positions
        mask = unrolled_mask(length, steps).clone()
        if steps > 1:
            mask[length + 1, length] = True
        return mask

    message = failed("08.4", leaky)
    assert "may read key (step 1, position 0)" in message and "1 entries differ" in message
    assert "shape" in failed("08.4", lambda length, steps: torch.ones(length, length + 1))


def test_09_1_best_shape():
    top_b = [0.33, 0.43, 0.50, 0.56]
    shapes = tree_shapes(4)
    assert (2, 2, 1, 1) in shapes and (4, 4) not in shapes and node_count((4, 2, 1, 1)) == 28
    # 1 + r(b1) + r(b1) r(b2) + ..., written out here rather than with the library's formula the check uses
    best = max(shapes, key=lambda s: sum(math.prod(top_b[b - 1] for b in s[: d + 1]) for d in range(len(s))))
    assert check("09.1", best, top_b=top_b, quiet=True)
    assert "an allowed shape expects more" in failed("09.1", (1, 1, 1, 1), top_b=top_b)
    assert "nodes" in failed("09.1", (4, 4), top_b=top_b)
    assert "guesses per depth" in failed("09.1", (5,), top_b=top_b)


def exercise_items(notebook: Path) -> dict[str, str]:
    """The numbered items of a notebook's Exercises section, by id ("07.2")."""
    cells = json.loads(notebook.read_text())["cells"]
    [text] = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown" and "## Exercises" in "".join(c["source"])]
    text = text[text.index("## Exercises"):]
    items = re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |\Z)", text, re.M | re.S)
    return {f"{notebook.name[:2]}.{n}": body for n, body in items}


def test_every_exercise_has_a_check_or_says_what_a_good_answer_contains():
    items = {id: body for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) for id, body in exercise_items(nb).items()}
    assert len(items) >= 50
    bare = [id for id, body in items.items() if not re.search(r'check\("\d\d\.\d+"|good answer|\(Check:', body, re.I)]
    assert not bare, f"exercises with neither a check nor what a good answer contains: {bare}"
    for id in EXERCISES:  # each check is named in its own exercise, with its own id
        assert f'check("{id}"' in items[id], f"exercise {id} does not name its check"
    named = {m for body in items.values() for m in re.findall(r'check\("(\d\d\.\d+)"', body)}
    assert named <= set(EXERCISES), f"exercises naming checks that don't exist: {named - set(EXERCISES)}"
