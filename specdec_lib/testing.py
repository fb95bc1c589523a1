"""Test fixtures: tiny random model pairs built from a config (no download), and a toy speculative step."""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from .sampling import logits_to_probs, residual_distribution, sample


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


# --- A toy speculative step over a small vocabulary, for exact statistical checks -------------

TOY_VOCAB = 8
TOY_SAMPLES = 20_000  # a planted bug lands far below p = 1e-6 at this size; the true rule is ~U(0, 1)


def toy_distributions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Target p (3, TOY_VOCAB) and draft q (2, TOY_VOCAB), with zeros in q where p > 0 and in p where q > 0."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(3, TOY_VOCAB, generator=gen) ** 2
    q = torch.rand(2, TOY_VOCAB, generator=gen) ** 2
    p[0, 0] = 0.0  # the draft may propose a token the target never emits
    q[0, 1] = 0.0  # the target may want a token the draft never proposes
    p[1, 2] = 0.0
    q[1, 3] = 0.0
    return p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


def buggy_argmax_verify(
    draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Planted bug: accept a draft token only when it is the target's argmax ("accept if equal")."""
    k = len(draft_tokens)
    for i in range(k):
        if int(draft_tokens[i]) != int(target_probs[i].argmax()):
            return i, int(sample(residual_distribution(target_probs[i], draft_probs[i]), generator))
    return k, int(sample(target_probs[k], generator))


def buggy_resample_from_p(
    draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Planted bug: the min(1, p/q) test is right, but a rejection resamples from p, not the residual."""
    u = torch.rand(len(draft_tokens), generator=generator)
    for i, x in enumerate(draft_tokens.tolist()):
        if not u[i] * draft_probs[i, x] < target_probs[i, x]:
            return i, int(sample(target_probs[i], generator))
    return len(draft_tokens), int(sample(target_probs[-1], generator))


def run_toy_verifier(verifier, n: int = TOY_SAMPLES, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a verifier n times on the toy step; return the first and second emitted tokens and n_accepted."""
    p, q = toy_distributions()
    gen = torch.Generator().manual_seed(seed)
    draft_tokens = torch.stack([torch.multinomial(q[i], n, replacement=True, generator=gen) for i in range(2)], 1)
    first, second, accepted = [], [], []
    for row in draft_tokens:
        n_acc, nxt = verifier(row, q, p, gen)
        emitted = row[:n_acc].tolist() + [nxt]
        first.append(emitted[0])
        second.append(emitted[1] if len(emitted) > 1 else -1)
        accepted.append(n_acc)
    return np.array(first), np.array(second), np.array(accepted)


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
