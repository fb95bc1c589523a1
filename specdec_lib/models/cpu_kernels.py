"""Chapter 05: make verifying K+1 tokens on a CPU cost about one call, not K+1 calls.

A verification call multiplies every weight matrix by K+1 rows instead of one. On a GPU that is
free; on a CPU it depends on which BLAS routine the product lands in, and that differs by machine:
- on one AMD EPYC, PyTorch's fp32 `linear` ran 2-3 rows as that many matrix-vector products
  (reading every weight 2-3 times), while one matrix-matrix product `W @ X^T` read them once;
- on one Intel Xeon, `linear` ran 2-3 rows for the price of one and `W @ X^T` cost twice as much;
- a single row times a very tall matrix (a 49k-token LM head) was ~2.4x faster padded to two rows
  on the EPYC.
So instead of a fixed rule, `use_small_batch_linear` times the candidate products once per
(weight shape, number of rows) on this machine, when it installs them (a few seconds for SmolLM2;
never inside a timed run), and keeps the fastest (`kernel_choices()` shows what it chose; bench
reports store it). Every candidate computes the same product.

The timing reads each weight from memory, as a forward pass does (`cold_copies`): timed on one
small weight held in cache, the matrix-vector product won at 1 row and lost in the model, which
made SmolLM2's 1-row step 53 ms instead of 38-42 ms on the EPYC, a slow target-only baseline that
flattered every speedup at small K. Results committed before 2026-12-07 were measured that way.

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
COLD_BYTES = 48 << 20  # weights timed per sample: more than a CPU's last-level cache (32 MiB on the EPYC measured)
MAX_COPIES = 64  # a small weight's copies: enough to leave the cache, few enough to tune in seconds


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


def kernel_table() -> dict[str, dict[int, str]]:
    """kernel_choices() for a report, by weight: "out x in, dtype" -> {rows: the candidate chosen}.

    The choice is timed once per process, so two runs of one command can differ in it: reports keep it
    to tell a change of kernel from a change of draft.
    """
    table: dict[str, dict[int, str]] = {}
    for (out_features, in_features, rows, dtype), name in sorted(_CHOICES.items(), key=lambda kv: kv[0][:3]):
        table.setdefault(f"{out_features}x{in_features}, {str(dtype).removeprefix('torch.')}", {})[rows] = name
    return table


def _twin(layer: nn.Linear) -> nn.Linear:
    """A copy of the layer's weight and bias in new memory (no forward patch: candidates call the weights directly)."""
    twin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    twin.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
    if layer.bias is not None:
        twin.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    return twin


def cold_copies(layer: nn.Linear, cold_bytes: int = COLD_BYTES) -> list[nn.Linear]:
    """The layer and enough copies of it to hold cold_bytes of weights: cycled through, each is read from memory."""
    nbytes = layer.weight.numel() * layer.weight.element_size()
    return [layer] + [_twin(layer) for _ in range(min(MAX_COPIES, -(-cold_bytes // nbytes)) - 1)]


def _fastest(layer: nn.Linear, x: torch.Tensor, cold_bytes: int = COLD_BYTES) -> str:
    """Time every candidate that serves x's row count, cycling through cold copies of the layer, taking turns;
    return the fastest's name.

    In a forward pass each weight is read once, from memory: a model's weights are far larger than the
    CPU's caches. Timing one small weight over and over keeps it in cache, and there a matrix-vector
    product wins that loses in the model (on the EPYC measured: 1-row target steps of 53 ms with the
    choices timed that way, 38-42 ms with these). Each timed sample also spans many calls, so the choice is
    steadier across processes (one call of ~50 us is mostly noise).
    """
    rows, copies = x.shape[0], cold_copies(layer, cold_bytes)

    def cycle(fn: Callable[[nn.Linear, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def over_copies() -> None:
            for copy in copies:
                fn(copy, x)
        return over_copies

    calls = {name: cycle(fn) for name, (fn, serves) in CANDIDATES.items() if rows in serves}
    with torch.no_grad():
        seconds = median_seconds(calls, "cpu", repeats=3, warmup=1)
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
