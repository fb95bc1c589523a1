"""Chapter 05: make verifying K+1 tokens on a CPU cost about one call, not K+1 calls.

PyTorch's fp32 `linear` on CPU (MKL) runs inputs of 2-3 rows as that many matrix-vector products,
reading every weight 2-3 times: a verification call over K+1 = 3 positions then costs ~3 target
calls, and speculative decoding loses. One matrix-matrix product W @ X^T reads the weights once.

The same kernel is also slow for one row times a very tall matrix (a 49k-token LM head): there a
2-row product is ~2.4x faster than the matrix-vector one. The target-only baseline gets that
speed-up too, so that speculative decoding is compared against the fastest plain decoding.
"""

from __future__ import annotations

import types

import torch
from torch import nn

MAX_ROWS = 16  # above this, the stock kernel is already efficient
TALL = 8192  # one row times a weight with at least this many rows: pad to two rows (measured on MKL)


def _small_batch_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward, with 2..MAX_ROWS rows (or one row and a tall weight) as one W @ X^T product on a CPU."""
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu" or not 1 <= rows <= MAX_ROWS or (rows == 1 and self.out_features < TALL):
        return nn.Linear.forward(self, x)
    flat = x.reshape(rows, -1)
    if rows == 1:
        y = torch.mm(self.weight, flat.repeat(2, 1).t())[:, :1].t()
    else:
        y = torch.mm(self.weight, flat.t()).t()
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], -1)


def use_small_batch_linear(model: nn.Module) -> nn.Module:
    """Route every nn.Linear of `model` through `_small_batch_forward` (in place); returns the model."""
    for module in model.modules():
        if type(module) is nn.Linear:  # not quantized or other subclasses, whose forward differs
            module.forward = types.MethodType(_small_batch_forward, module)
    return model


def fast_on_cpu(*models: nn.Module) -> None:
    """Route the linear layers of every model on a CPU through one matrix-matrix product (as load_pair runs them)."""
    for model in models:
        if next(model.parameters()).device.type == "cpu":
            use_small_batch_linear(model)
