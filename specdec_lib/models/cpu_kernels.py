"""Chapter 05: make verifying K+1 tokens on a CPU cost about one call, not K+1 calls.

A verification call multiplies every weight matrix by K+1 rows instead of one. On a GPU that is
free; on a CPU it depends on which BLAS routine the product lands in, and that differs by machine:
- on one AMD EPYC, PyTorch's fp32 `linear` ran 2-3 rows as that many matrix-vector products
  (reading every weight 2-3 times), while one matrix-matrix product `W @ X^T` read them once;
- on one Intel Xeon, `linear` ran 2-3 rows for the price of one and `W @ X^T` cost twice as much;
- a single row times a very tall matrix (a 49k-token LM head) was ~2.4x faster padded to two rows
  on the EPYC.
So instead of a fixed rule, `use_small_batch_linear` times the candidate products once per
(weight shape, number of rows) on this machine, when it installs them (about a second for SmolLM2,
a few for GPT-2 medium; never inside a timed run), and keeps the fastest (`kernel_choices()` shows
what it chose). Every candidate computes the same product.

GPT-2 computes its projections with transformers' `Conv1D` (an `addmm` with the weight stored
(in, out)), which costs 1.3-1.5 calls for 2-3 rows on that Xeon; `use_small_batch_linear` turns
each one into an `nn.Linear` holding the transposed weight, so it gets the same treatment.

`load_pair(..., cpu_kernels=False)` (and `bench --no-cpu-kernels`) leaves the stock kernels in place.
"""

from __future__ import annotations

import types
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers.pytorch_utils import Conv1D

from ..loop.timer import median_seconds

MAX_ROWS = 16  # above this, the stock kernel is already efficient


def _stock(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """PyTorch's own linear: x @ W^T + b."""
    return F.linear(x, layer.weight, layer.bias)


def _weight_first(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """One matrix-matrix product W @ X^T, transposed back."""
    y = torch.mm(layer.weight, x.t()).t()
    return (y + layer.bias if layer.bias is not None else y).contiguous()


def _padded(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """One row, computed as a two-row W @ X^T product (faster than the matrix-vector kernel on some CPUs)."""
    y = torch.mm(layer.weight, x.repeat(2, 1).t())[:, :1].t()
    return (y + layer.bias if layer.bias is not None else y).contiguous()


# name -> (product of a (rows, in) input, the row counts it serves)
CANDIDATES: dict[str, tuple[Callable[[nn.Linear, torch.Tensor], torch.Tensor], range]] = {
    "stock": (_stock, range(1, MAX_ROWS + 1)),
    "weight-first": (_weight_first, range(2, MAX_ROWS + 1)),
    "padded": (_padded, range(1, 2)),
}
_CHOICES: dict[tuple[int, int, int, torch.dtype], str] = {}


def kernel_choices() -> dict[tuple[int, int, int, torch.dtype], str]:
    """What this process measured so far: (out_features, in_features, rows, dtype) -> the fastest candidate."""
    return dict(_CHOICES)


def _fastest(layer: nn.Linear, x: torch.Tensor) -> str:
    """Time every candidate that serves x's row count on this input, taking turns; return the fastest's name."""
    rows = x.shape[0]
    calls = {name: (lambda fn=fn: fn(layer, x)) for name, (fn, serves) in CANDIDATES.items() if rows in serves}
    with torch.no_grad():
        seconds = median_seconds(calls, "cpu", repeats=5, warmup=1)
    return min(seconds, key=seconds.get)


def _small_batch_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward on a CPU with 1..MAX_ROWS rows: the product measured fastest for this shape; else stock."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or not 1 <= rows <= MAX_ROWS:
        return nn.Linear.forward(self, x)
    flat = x.reshape(rows, -1)
    key = (self.out_features, self.in_features, rows, x.dtype)
    if key not in _CHOICES:  # a shape or dtype that appeared after tuning, e.g. the model was cast
        _CHOICES[key] = _fastest(self, flat.detach())
    return CANDIDATES[_CHOICES[key]][0](self, flat).reshape(*x.shape[:-1], -1)


def linear_from_conv1d(conv: Conv1D) -> nn.Linear:
    """An nn.Linear computing exactly what `conv` computes: the same bias, the weight transposed to (out, in)."""
    weight = conv.weight
    linear = nn.Linear(conv.nx, conv.nf, bias=True, device=weight.device, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=weight.requires_grad)
    linear.bias = conv.bias
    return linear


def _tune(layers: list[nn.Linear]) -> None:
    """Choose the product for every weight shape among `layers` (CPU ones) at 1..MAX_ROWS rows, unless already chosen."""
    shapes = {(m.out_features, m.in_features, m.weight.dtype): m for m in layers if m.weight.device.type == "cpu"}
    for (out_features, in_features, dtype), layer in shapes.items():
        for rows in range(1, MAX_ROWS + 1):
            key = (out_features, in_features, rows, dtype)
            if key not in _CHOICES:
                _CHOICES[key] = _fastest(layer, torch.randn(rows, in_features, dtype=dtype))


def use_small_batch_linear(model: nn.Module) -> nn.Module:
    """Route every nn.Linear (and GPT-2 Conv1D, converted) of `model` through `_small_batch_forward`, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                setattr(parent, name, linear_from_conv1d(child))
    layers = [m for m in model.modules() if type(m) is nn.Linear]  # not quantized or other subclasses
    for module in layers:
        module.forward = types.MethodType(_small_batch_forward, module)
    _tune(layers)  # now, so that no timed run pays for it
    return model


def fast_on_cpu(*models: nn.Module) -> None:
    """Route the linear layers of every model on a CPU through the measured-fastest products (as load_pair runs them)."""
    for model in models:
        if next(model.parameters()).device.type == "cpu":
            use_small_batch_linear(model)


def uses_small_batch_linear(model: nn.Module) -> bool:
    """Whether `use_small_batch_linear` has been applied to the model."""
    return any("forward" in vars(m) for m in model.modules() if type(m) is nn.Linear)
