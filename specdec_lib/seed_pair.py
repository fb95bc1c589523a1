"""Chapter 05: the seed pair's sizes (gpt2 / gpt2-medium) with random weights, timed under an imposed acceptance rate.

Random weights cost exactly what trained ones cost per call, but a random draft never agrees with
a random target. To time the loop at these sizes without the hub, the verifier accepts each draft
token with probability alpha (taken from a real pair) instead of comparing tokens: the models,
caches and rollbacks do all their real work, and only the accept/reject decision is simulated.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from .cpu_linear import fast_on_cpu
from .generate import VerifyRule

# (layers, width, heads) of the hub's configs; both have GPT-2's 50,257-token vocabulary and 1,024 positions.
SEED_SHAPES = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16)}
SEED_PAIR_NAME = "seed-sized random GPT-2 pair: target 24x1024 (gpt2-medium's shape), draft 12x768 (gpt2's)"


def random_gpt2(
    shape: tuple[int, int, int], *, vocab_size: int = 50257, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32, seed: int = 0,
) -> PreTrainedModel:
    """A GPT-2 of the given (layers, width, heads) with random weights, built directly on `device`."""
    n_layer, n_embd, n_head = shape
    config = GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):  # initialising on the GPU takes a second, not the CPU's ten
        model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = 0
    return model.to(dtype=dtype).eval()


def seed_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> PreTrainedModel:
    """A random-weight GPT-2 of a SEED_SHAPES size, with the CPU kernels load_pair gives its models."""
    model = random_gpt2(SEED_SHAPES[name], device=device, dtype=dtype, seed=seed)
    fast_on_cpu(model)
    return model


def seed_sized_pair(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedModel]:
    """(target, draft) at gpt2-medium's and gpt2's sizes, random weights, on `device` in `dtype`."""
    return seed_model("gpt2-medium", device, dtype, seed=0), seed_model("gpt2", device, dtype, seed=1)


def imposed_acceptance(alpha: float, generator: torch.Generator | None = None) -> VerifyRule:
    """A verify rule that passes each draft token with probability alpha, independently, up to the first failure.

    It does the greedy rule's device work (an argmax over all k+1 rows) so that timings compare, and
    returns the target's argmax after the accepted prefix as the next token. Its output is not the
    target's: use it to time a loop, never to generate text.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")

    def verify(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Accept a Bernoulli(alpha) prefix of the drafts; the next token is the target's argmax there."""
        choices = target_logits.argmax(dim=-1)
        passed = torch.rand(draft_tokens.shape[0], device=choices.device, generator=generator) < alpha
        n_accepted = passed.long().cumprod(dim=0).sum()
        return n_accepted, choices[n_accepted]

    return verify


def read_alpha(spec: str) -> tuple[float, str]:
    """An acceptance rate from a number ("0.38") or a bench JSON file (its pooled alpha); returns (alpha, source)."""
    try:
        alpha, source = float(spec), "given"
    except ValueError:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--alpha takes a number in [0, 1] or a bench JSON file; {spec!r} is neither") from None
        try:
            alpha = float(json.loads(path.read_text())["alpha"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{spec}: not a bench JSON with a pooled 'alpha' ({err})") from None
        source = f"pooled alpha of {spec}"
    if not 0.0 <= alpha <= 1.0:  # NaN fails this too
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r} ({source})")
    return alpha, source
