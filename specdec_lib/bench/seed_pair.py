"""Chapter 05: the seed pair's sizes (gpt2 / gpt2-medium) with random weights, timed under an imposed acceptance rate.

Random weights cost exactly what trained ones cost per call, but a random draft never agrees with
a random target. To time the loop at these sizes without the hub, `ImposedAcceptance` wraps the
target so that its choice after each fed token is that next fed token with probability alpha (taken
from a real pair): greedy verification then accepts each draft token with probability alpha. The
models, caches and rollbacks do all their real work; only the target's verdict is simulated, and the
speculative loop itself is the one every other run uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from ..loop.kv_cache import STATIC_CACHES
from ..models.cpu_kernels import fast_on_cpu

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
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
    cpu_kernels: bool = True,
) -> PreTrainedModel:
    """A random-weight GPT-2 of a SEED_SHAPES size, with the CPU kernels load_pair gives its models (unless turned off)."""
    model = random_gpt2(SEED_SHAPES[name], device=device, dtype=dtype, seed=seed)
    if cpu_kernels:
        fast_on_cpu(model)
    return model


def seed_sized_pair(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, cpu_kernels: bool = True
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """(target, draft) at gpt2-medium's and gpt2's sizes, random weights, on `device` in `dtype`."""
    return (seed_model("gpt2-medium", device, dtype, seed=0, cpu_kernels=cpu_kernels),
            seed_model("gpt2", device, dtype, seed=1, cpu_kernels=cpu_kernels))


class ImposedAcceptance:
    """A target whose greedy choice after each fed token is the next fed token with probability alpha.

    In a verification call over [last token, d1 .. dk], the row that predicts d_i picks d_i with
    probability alpha and anything else otherwise, independently of what the model or the draft
    would say, so greedy verification accepts a Bernoulli(alpha) prefix; the next token is the
    model's own best choice other than the rejected draft. Every call does the wrapped model's full
    work plus one small scatter. Its output is not the model's: use it to time a loop, never to generate text.
    """

    def __init__(self, model: PreTrainedModel, alpha: float, generator: torch.Generator | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        self.model, self.alpha, self.generator = model, alpha, generator
        self.config, self.device = model.config, model.device
        # Share the model's static caches (chapter 10): a wrapper per run must not allocate, nor recompile, anew.
        self.__dict__[STATIC_CACHES] = model.__dict__.setdefault(STATIC_CACHES, {})

    def __getattr__(self, name: str):
        """Everything but the verdict is the wrapped model's: dtype, generation config, its static caches (chapter 10)."""
        if name == "model":  # not set yet (e.g. while copying): don't recurse
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, input_ids: torch.Tensor, **kwargs):
        """The wrapped model's output, with the rows that predict a fed token made to agree with it at random."""
        return self._impose(self.model(input_ids=input_ids, **kwargs), input_ids)

    def get_compiled_call(self, compile_config) -> Callable:
        """The wrapped model's compiled call (chapter 10), its verdict imposed after it, outside the compiled graph."""
        compiled = self.model.get_compiled_call(compile_config)
        return lambda input_ids, **kwargs: self._impose(compiled(input_ids=input_ids, **kwargs), input_ids)

    def _impose(self, out, input_ids: torch.Tensor):
        """Make each row that predicts a fed token pick it with probability alpha, in place in `out`'s logits."""
        logits = out.logits[0]  # (keep, V): the last `keep` fed positions
        keep = logits.shape[0]
        if keep > 1:
            rows = torch.arange(keep - 1, device=logits.device)
            fed_next = input_ids[0, input_ids.shape[1] - keep + 1 :]  # the token each of those rows predicts
            passed = torch.rand(keep - 1, device=logits.device, generator=self.generator) < self.alpha
            above = logits[:-1].amax(dim=-1) + 1.0  # beats every logit of its row: the argmax
            below = logits[:-1].amin(dim=-1) - 1.0  # loses to every logit: never the argmax
            logits[rows, fed_next] = torch.where(passed, above, below)
        return out


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
