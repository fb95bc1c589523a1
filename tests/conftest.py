"""Shared fixtures: tiny random model pairs (CPU, fixed seeds), built once per session."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch

from specdec_lib.models.cpu_kernels import use_small_batch_linear
from specdec_lib.testing import tiny_pair

# Draft noise levels giving roughly these greedy agreements on both tiny architectures.
AGREEMENT = {"perfect": 0.0, "medium": 0.03, "low": 1.0}
ARCHS = ("gpt2", "llama")
SLIDING_ARCHS = ("mistral", "qwen2")  # sliding-window attention: all layers, and a hybrid
VOCAB = 64


@lru_cache(maxsize=None)
def cached_pair(arch: str, level: str, cpu_kernels: bool = False):
    """A (target, draft) tiny pair, reused across tests (models are never mutated); cpu_kernels as load_pair sets them."""
    if cpu_kernels:
        return tuple(use_small_batch_linear(copy.deepcopy(m)) for m in cached_pair(arch, level))
    return tiny_pair(arch, noise=AGREEMENT[level], vocab_size=VOCAB)


def prompts(n: int = 20, seed: int = 0) -> list[torch.Tensor]:
    """n random prompts of lengths 1..n (different lengths exercise positions and cache sizes)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (1, 1 + i), generator=gen) for i in range(n)]


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param
