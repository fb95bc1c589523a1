"""Test fixtures: tiny random models built from a config (no download), a toy tokenizer, exact distributions."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .loop.batch import left_pad  # noqa: F401  (the tests build their batches with it)
from .loop.sampling import logits_to_probs


ARCHS = ("gpt2", "llama", "mistral", "qwen2")
SLIDING_WINDOW = 8  # shorter than most test prompts plus their continuations


def tiny_model(
    arch: Literal["gpt2", "llama", "mistral", "qwen2"] = "gpt2",
    *,
    vocab_size: int = 64,
    n_layer: int = 2,
    hidden: int = 64,
    n_head: int = 4,
    max_positions: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A small randomly initialised causal LM of the given architecture, in eval mode on CPU.

    "mistral" attends over a sliding window of SLIDING_WINDOW tokens in every layer; "qwen2" is a
    hybrid: full attention in its first layer, the sliding window in the others.
    """
    torch.manual_seed(seed)
    # A large init spread makes logits far apart, so an argmax never hinges on float rounding.
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden, n_layer=n_layer,
            n_head=n_head, initializer_range=0.3, bos_token_id=None, eos_token_id=None,
        )
        model = GPT2LMHeadModel(config)
    elif arch in ("llama", "mistral", "qwen2"):
        common = dict(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head // 2,
            max_position_embeddings=max_positions, initializer_range=0.3,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(**common))
        elif arch == "mistral":
            model = MistralForCausalLM(MistralConfig(sliding_window=SLIDING_WINDOW, **common))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=True, sliding_window=SLIDING_WINDOW,
                                                 max_window_layers=1, **common))
    else:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
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
    arch: Literal["gpt2", "llama", "mistral", "qwen2"] = "gpt2",
    *,
    noise: float = 0.5,
    seed: int = 0,
    **config: int,
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """(target, draft): a tiny random target and a noisy copy of it; noise=0 agrees perfectly."""
    target = tiny_model(arch, seed=seed, **config)
    return target, noisy_copy(target, noise, seed=seed + 1)


def tiny_gpt2_pair(noise: float = 0.02) -> tuple[PreTrainedModel, PreTrainedModel]:
    """The benchmark's tiny GPT-2-style pair: 4 layers, 256 wide, 1024 positions, and a noisy copy as draft."""
    return tiny_pair("gpt2", noise=noise, vocab_size=512, n_layer=4, hidden=256, max_positions=1024)


@torch.no_grad()
def first_difference(target: PreTrainedModel, prompt: torch.Tensor, ref: torch.Tensor, got: torch.Tensor) -> tuple[int, float]:
    """Where two greedy continuations of `prompt` first differ, and the gap between the target's logits of the two tokens there.

    A gap near 0 is a near tie: float rounding (a batched matrix product) can flip such an argmax.
    """
    index = int((ref != got).nonzero()[0])
    logits = target(torch.cat([prompt.view(-1), ref[:index]])[None]).logits[0, -1]
    return index, float((logits[ref[index]] - logits[got[index]]).abs())


def word_tokenizer(vocab_size: int = 64, **special_tokens: str):
    """A real Hugging Face fast tokenizer for tiny models: the words t0 .. t{vocab_size-1}, split on whitespace
    (special_tokens: pad_token="t0", eos_token="t1", ... as PreTrainedTokenizerFast takes them)."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(tok_models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", **special_tokens)


class ToyTokenizer:
    """A stand-in tokenizer for tiny models: token i is the i-th printable character (space is 0)."""

    alphabet = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,\n"

    def __init__(self, vocab_size: int = 64):
        self.vocab_size = vocab_size

    def decode(self, ids) -> str:
        """Characters of the ids (ids beyond the alphabet show as ?)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        ids = [ids] if isinstance(ids, int) else ids
        return "".join(self.alphabet[i] if i < len(self.alphabet) else "?" for i in ids)

    def __call__(self, text: str, return_tensors: str | None = None):
        """Encode text character by character, like a Hugging Face tokenizer call."""
        ids = [self.alphabet.index(ch) % self.vocab_size for ch in text if ch in self.alphabet]
        return type("Encoding", (), {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids})()


@torch.no_grad()
def exact_two_token_distribution(target: PreTrainedModel, prompt: torch.Tensor, **filters) -> torch.Tensor:
    """The target's exact joint distribution of its first two sampled tokens after `prompt`, shape (V*V,)."""
    p1 = logits_to_probs(target(prompt).logits[0, -1], **filters)
    vocab = p1.shape[0]
    seqs = torch.cat([prompt.repeat(vocab, 1), torch.arange(vocab).view(-1, 1)], 1)
    p2 = logits_to_probs(target(seqs).logits[:, -1], **filters)
    return (p1[:, None] * p2).reshape(-1)
