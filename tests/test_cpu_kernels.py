"""The small-batch CPU linear path computes what nn.Linear computes, for every input shape."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from specdec_lib.models.cpu_kernels import (
    CANDIDATES,
    MAX_COPIES,
    MAX_ROWS,
    _fastest,
    cold_copies,
    fast_on_cpu,
    kernel_choices,
    kernel_table,
    use_small_batch_linear,
)
from specdec_lib.testing import tiny_model


@pytest.mark.parametrize("shape", [(1, 0, 32), (1, 1, 32), (1, 3, 32), (2, 4, 32), (MAX_ROWS, 32), (1, MAX_ROWS + 1, 32)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [48, 8192])
def test_same_result_as_stock_linear(shape, bias, out_features):
    torch.manual_seed(0)
    stock = nn.Linear(32, out_features, bias=bias)
    fast = use_small_batch_linear(nn.Sequential(nn.Linear(32, out_features, bias=bias)))[0]
    fast.load_state_dict(stock.state_dict())
    x = torch.randn(shape)
    torch.testing.assert_close(fast(x), stock(x))


def test_whole_model_logits_unchanged_and_gradients_flow():
    model = tiny_model("llama", n_layer=2)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(ids).logits
    use_small_batch_linear(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)
    model(ids).logits.sum().backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_fast_on_cpu_patches_cpu_models_only():
    cpu = nn.Sequential(nn.Linear(4, 4))
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 4))
    fast_on_cpu(cpu, meta)
    assert "forward" in vars(cpu[0]) and "forward" not in vars(meta[0])


def test_gpt2_conv1d_becomes_linear_with_the_same_logits():
    """GPT-2's Conv1D projections turn into nn.Linear with the transposed weight; the model computes the same."""
    from transformers.pytorch_utils import Conv1D

    model = tiny_model("gpt2", n_layer=2)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = [model(ids[:, :n]).logits for n in (1, 3, 5)]
    use_small_batch_linear(model)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert all("forward" in vars(m) for m in model.modules() if type(m) is nn.Linear)
    with torch.no_grad():
        for n, ref in zip((1, 3, 5), before):
            torch.testing.assert_close(model(ids[:, :n]).logits, ref)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name, rows", [(name, rows) for name, (_, serves) in CANDIDATES.items()
                                        for rows in (1, 2, 3, MAX_ROWS) if rows in serves])
def test_every_candidate_computes_the_linear_product_contiguously(name, rows, bias):
    """Whichever product the timing picks on a machine, it is nn.Linear's result, laid out contiguously."""
    fn = CANDIDATES[name][0]
    torch.manual_seed(0)
    layer, x = nn.Linear(32, 300, bias=bias), torch.randn(rows, 32)
    y = fn(layer, x)
    torch.testing.assert_close(y, layer(x))
    assert y.is_contiguous()


def test_choices_are_measured_when_installed_for_every_row_count():
    use_small_batch_linear(nn.Sequential(nn.Linear(24, 40)))
    made = {k: v for k, v in kernel_choices().items() if k[:2] == (40, 24) and k[3] == torch.float32}
    assert sorted(k[2] for k in made) == list(range(1, MAX_ROWS + 1))
    assert all(k[2] in CANDIDATES[name][1] for k, name in made.items())


def test_a_dtype_met_later_is_measured_on_first_use():
    layer = use_small_batch_linear(nn.Sequential(nn.Linear(20, 36)))[0].to(torch.float64)
    assert (36, 20, 3, torch.float64) not in kernel_choices()
    assert layer(torch.randn(3, 20, dtype=torch.float64)).shape == (3, 36)
    assert (36, 20, 3, torch.float64) in kernel_choices()


def test_the_report_table_lists_each_weights_choice_by_row_count():
    use_small_batch_linear(nn.Sequential(nn.Linear(24, 40)))
    table = kernel_table()
    assert list(table["40x24, float32"]) == list(range(1, MAX_ROWS + 1))
    assert table["40x24, float32"] == {k[2]: name for k, name in kernel_choices().items() if k[:2] == (40, 24) and k[3] == torch.float32}
    assert json.loads(json.dumps(table))["40x24, float32"]["1"] in CANDIDATES  # a bench report stores it as JSON


def test_cold_copies_hold_the_weights_in_new_memory_up_to_the_budget():
    layer = nn.Linear(32, 64)  # 8 KiB of float32 weights
    copies = cold_copies(layer, cold_bytes=40_000)
    assert len(copies) == 5 and copies[0] is layer
    assert len({c.weight.data_ptr() for c in copies}) == 5
    assert all(torch.equal(c.weight, layer.weight) and torch.equal(c.bias, layer.bias) for c in copies)
    assert len(cold_copies(layer, cold_bytes=1 << 40)) == MAX_COPIES
    assert cold_copies(layer, cold_bytes=1) == [layer]  # a weight larger than the budget is cold already


def test_candidates_are_timed_on_every_cold_copy(monkeypatch):
    seen: list[int] = []

    def recording(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        seen.append(layer.weight.data_ptr())
        return F.linear(x, layer.weight, layer.bias)

    monkeypatch.setitem(CANDIDATES, "recording", (recording, range(1, 2)))
    layer = nn.Linear(32, 64)
    _fastest(layer, torch.randn(1, 32), cold_bytes=40_000)
    assert len(set(seen)) == 5 and len(seen) == 5 * 4  # every copy, in each of 1 warm-up + 3 timed rounds
