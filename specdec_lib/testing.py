"""Tiny random model pairs for tests and quick experiments: built from a config, no download."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel


def tiny_model(
    arch: Literal["gpt2", "llama"] = "gpt2",
    *,
    vocab_size: int = 64,
    n_layer: int = 2,
    hidden: int = 64,
    n_head: int = 4,
    max_positions: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A small randomly initialised causal LM of the given architecture, in eval mode on CPU."""
    torch.manual_seed(seed)
    # A large init spread makes logits far apart, so an argmax never hinges on float rounding.
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden, n_layer=n_layer,
            n_head=n_head, initializer_range=0.3, bos_token_id=None, eos_token_id=None,
        )
        model = GPT2LMHeadModel(config)
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head // 2,
            max_position_embeddings=max_positions, initializer_range=0.3,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"arch must be 'gpt2' or 'llama', got {arch!r}")
    model.generation_config.pad_token_id = 0  # silences generate()'s padding warning
    return model.eval()


def noisy_copy(model: PreTrainedModel, noise: float, seed: int = 1) -> PreTrainedModel:
    """A draft that partly agrees with `model`: each weight plus Gaussian noise of `noise` times its std."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            if noise > 0 and param.numel() > 1:
                param.add_(torch.randn(param.shape, generator=gen) * noise * param.std())
    return draft.eval()


def tiny_pair(
    arch: Literal["gpt2", "llama"] = "gpt2",
    *,
    noise: float = 0.5,
    seed: int = 0,
    **config: int,
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """(target, draft): a tiny random target and a noisy copy of it; noise=0 agrees perfectly."""
    target = tiny_model(arch, seed=seed, **config)
    return target, noisy_copy(target, noise, seed=seed + 1)
