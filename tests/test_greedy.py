"""greedy_verify on hand-made cases."""

import pytest
import torch

from specdec_lib import greedy_verify


def logits_for(choices: list[int], vocab: int = 10) -> torch.Tensor:
    """Logits (len(choices), vocab) whose argmax in row i is choices[i]."""
    logits = torch.zeros(len(choices), vocab)
    logits[torch.arange(len(choices)), torch.tensor(choices)] = 5.0
    return logits


def test_all_match_gives_bonus_token():
    assert greedy_verify(torch.tensor([3, 1, 4]), logits_for([3, 1, 4, 7])) == (3, 7)


def test_first_mismatch():
    assert greedy_verify(torch.tensor([3, 1, 4]), logits_for([2, 1, 4, 7])) == (0, 2)


def test_last_mismatch():
    assert greedy_verify(torch.tensor([3, 1, 4]), logits_for([3, 1, 5, 7])) == (2, 5)


def test_mismatch_then_match_stops_at_first_mismatch():
    assert greedy_verify(torch.tensor([3, 1, 4]), logits_for([3, 9, 4, 7])) == (1, 9)


@pytest.mark.parametrize("draft, choices, expected", [([6], [6, 2], (1, 2)), ([6], [5, 2], (0, 5))])
def test_k_equals_one(draft, choices, expected):
    assert greedy_verify(torch.tensor(draft), logits_for(choices)) == expected


def test_returns_python_ints():
    n, nxt = greedy_verify(torch.tensor([3]), logits_for([3, 4]))
    assert type(n) is int and type(nxt) is int


def test_wrong_logits_shape_is_a_value_error():
    with pytest.raises(ValueError, match="k\\+1"):
        greedy_verify(torch.tensor([3, 1]), logits_for([3, 1]))
