"""The small-batch CPU linear path computes what nn.Linear computes, for every input shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from specdec_lib.cpu_linear import MAX_ROWS, TALL, fast_on_cpu, use_small_batch_linear
from specdec_lib.testing import tiny_model


@pytest.mark.parametrize("shape", [(1, 0, 32), (1, 1, 32), (1, 3, 32), (2, 4, 32), (MAX_ROWS, 32), (1, MAX_ROWS + 1, 32)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [48, TALL])
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
