"""Chapters 04 and 10: KV caches and their rollback after a rejection, on transformers' own cache classes.

Chapter 04's `DynamicCache` grows by concatenation and is cropped after a rejection. Chapter 10's
`StaticCache` is preallocated: every call writes at explicit positions, a rollback only moves the
write position back (the rejected entries are overwritten next time), and since no shape ever
changes, the fixed-size calls can be compiled once and replayed (gpt-fast's `generate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import CacheLayerMixin, StaticLayer
from transformers.generation.configuration_utils import CompileConfig

CACHE_IMPLEMENTATIONS = ("dynamic", "static")
STATIC_BUCKET = 128  # static caches are sized in multiples of this, so prompts of similar lengths share compiled calls
STATIC_CACHES = "_specdec_static_caches"  # the model attribute holding its static caches, reused run after run


def max_positions(model: PreTrainedModel) -> int | None:
    """The longest sequence the model can attend over (gpt2: 1024), or None when unbounded."""
    return getattr(model.config, "max_position_embeddings", None)


def pick_hidden(hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """The asked-for layers of a model output's `hidden_states`, concatenated on the last axis (..., len(layers) * d)."""
    picked = [hidden_states[i] for i in layers]
    return picked[0] if len(picked) == 1 else torch.cat(picked, dim=-1)


def croppable_cache(model: PreTrainedModel) -> DynamicCache:
    """A DynamicCache for `model` that can be rolled back, sliding-window and linear-attention layers included.

    Built from the config, a sliding-window layer keeps only its last window of keys and values, so
    it can't forget rejected drafts once the window is full. `activate_past_recording` (what
    transformers' assisted generation does for its draft) makes such layers keep everything until
    the next `crop`, which then trims them back to the window. Full-attention layers don't change.
    """
    cache = DynamicCache(config=model.config)
    cache.activate_past_recording()
    return cache


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Roll the cache back so it holds the first `length` positions only (no-op if already shorter)."""
    # transformers >= 5 takes the number of tokens to remove, as a negative int. crop(0) is called
    # too: it trims recording sliding-window layers back to their window and changes nothing else.
    cache.crop(-max(cache.get_seq_length() - length, 0))


@dataclass(frozen=True)
class CacheSpec:
    """How a run caches and calls its models: chapter 04's dynamic cache, or chapter 10's static one, compiled or not."""

    use_cache: bool = True
    implementation: Literal["dynamic", "static"] = "dynamic"
    compile: bool = False  # compile the fixed-size calls (static cache only)
    max_length: int | None = None  # static: the most positions a run will hold (prompt + new tokens + k + 1)

    def __post_init__(self) -> None:
        if self.implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got {self.implementation!r}")
        if self.implementation == "static" and not self.use_cache:
            raise ValueError("cache_implementation='static' needs use_cache=True")
        if self.compile and self.implementation != "static":
            # A growing cache changes the calls' shapes every step, so each step would recompile.
            raise ValueError("compile=True needs cache_implementation='static' (a dynamic cache changes shape every step)")


@torch.inference_mode()  # its tensors are written in the runner's inference mode, so they are emptied in it too
def static_cache(model: PreTrainedModel, length: int, role: str = "target") -> StaticCache:
    """A StaticCache holding at least `length` positions, emptied, reused across runs of `model` in the same role.

    Reusing it keeps the tensors at the same addresses, which compiled calls and CUDA graphs rely on;
    `role` keeps a model drafting for itself from sharing its target's cache. So a runner's static
    cache serves one run at a time: the next runner of the same model and role empties it.
    Sliding-window layers get full-length layers too: a window-sized static layer forgets what a
    rollback must restore, and the model's mask applies the window from positions anyway.
    """
    slots = model.__dict__.setdefault(STATIC_CACHES, {})
    key = (role, str(model.device), model.dtype)  # a model moved or cast since needs a new cache
    cache = slots.get(key)
    if cache is None or cache.layers[0].max_cache_len < length:
        size = -(-length // STATIC_BUCKET) * STATIC_BUCKET
        limit = max_positions(model)
        cache = slots[key] = full_static_cache(model, size if limit is None else max(length, min(size, limit)))
    cache.reset()
    return cache


def full_static_cache(model: PreTrainedModel, size: int) -> StaticCache:
    """A new StaticCache of `size` positions whose every layer holds them all (sliding-window layers included)."""
    cache = StaticCache(config=model.config, max_cache_len=size)
    if not all(isinstance(layer, CacheLayerMixin) for layer in cache.layers):
        raise NotImplementedError(f"{model.config.model_type} has linear-attention layers; use the dynamic cache")
    cache.layers = [StaticLayer(size) if layer.is_sliding else layer for layer in cache.layers]
    return cache


def compiled_call(model: PreTrainedModel) -> Callable:
    """The model's forward through torch.compile (transformers' `get_compiled_call`), CUDA graphs on a GPU."""
    # "reduce-overhead" records CUDA graphs: a replay launches the whole step at once. A CPU has none.
    mode = "reduce-overhead" if model.device.type == "cuda" else "default"
    # Every (model, call length) is one more graph of the same forward code, and dynamo falls back to
    # eager after 8 of them: a K sweep (target, draft and baseline) needs more.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return model.get_compiled_call(CompileConfig(mode=mode, fullgraph=False, dynamic=False))


class DynamicKV:
    """Chapter 04's cache behind the one interface: a DynamicCache that grows by concatenation, cropped to roll back.

    The interface (`length`, `capacity`, `fed`, `rollback`, `keep`) is what the loop and the drafters
    use, whatever the kind; `cache` is transformers' own object, passed to the model as is.
    Lengths are counted for the one row of a batch-1 run; a batch whose rows accept different
    numbers of drafts keeps one length per row (`specdec_lib.loop.batch.BatchKV`, chapter 11).
    """

    capacity: int | None = None  # a dynamic cache grows as needed

    def __init__(self, cache: DynamicCache):
        self.cache = cache

    @property
    def length(self) -> int:
        """How many leading positions of the sequence the cache holds."""
        return self.cache.get_seq_length()

    def fed(self, n: int) -> None:
        """A call wrote n more positions: a dynamic cache counts them itself."""

    def rollback(self, length: int) -> None:
        """Forget every position from `length` on (crop)."""
        crop_cache(self.cache, length)

    def _layer_end(self, layer: CacheLayerMixin) -> int:
        """Where the layer's entries end: a sliding-window layer may hold fewer than `length`."""
        return layer.keys.shape[-2]

    @torch.inference_mode()  # the cache's tensors were made in inference mode; in-place writes must be too
    def keep(self, n_tail: int, kept: Sequence[int]) -> None:
        """Of the last n_tail positions keep those at indices `kept` (in order, 0 = the first of the tail); forget the rest.

        A chain keeps a prefix (0, 1, .., n - 1): a plain rollback. A tree's accepted path is scattered
        among its siblings' (Medusa's `update_inference_inputs`): gather it into place first.
        """
        kept = list(kept)
        if kept != list(range(len(kept))):
            for layer in self.cache.layers:
                base = self._layer_end(layer) - n_tail
                index = torch.as_tensor(kept, dtype=torch.long, device=layer.keys.device) + base
                layer.keys[:, :, base : base + len(kept)] = layer.keys.index_select(2, index)
                layer.values[:, :, base : base + len(kept)] = layer.values.index_select(2, index)
        self.rollback(self.length - n_tail + len(kept))


class StaticKV(DynamicKV):
    """Chapter 10's cache behind the same interface: a preallocated StaticCache, rolled back by moving the write position.

    The length is a host int, so reading it costs no device sync (the cache's own counter is a tensor).
    """

    def __init__(self, cache: StaticCache):
        super().__init__(cache)
        self._length = 0  # the next write position
        self.capacity = cache.layers[0].max_cache_len

    @property
    def length(self) -> int:
        """How many leading positions of the sequence the cache holds."""
        return self._length

    def fed(self, n: int) -> None:
        """A call wrote n more positions at the write position."""
        self._length += n

    @torch.inference_mode()  # the cache's counter is an inference tensor, moved in place
    def rollback(self, length: int) -> None:
        """Free: move the write position back; the next call overwrites the rest, and until then masks hide it."""
        if length < self._length:
            self.cache.crop(length - self._length)
            self._length = length

    def _layer_end(self, layer: CacheLayerMixin) -> int:
        """Every static layer holds every position up to the write position."""
        return self._length


def kv_cache(model: PreTrainedModel, spec: CacheSpec, croppable: bool = True, role: str = "target") -> DynamicKV | None:
    """The cache `spec` asks for, behind the one interface: static, dynamic (croppable or not), or None."""
    if spec.implementation == "static":
        if spec.max_length is None:
            raise ValueError("a static cache needs spec.max_length, the most positions the run will hold")
        return StaticKV(static_cache(model, spec.max_length, role))
    if not spec.use_cache:
        return None
    # Plain decoding never rolls back, so it keeps transformers' default (window-sized) cache.
    return DynamicKV(croppable_cache(model) if croppable else DynamicCache(config=model.config))


class ModelRunner:
    """Feeds a model a growing sequence: all of it without a cache, only the unseen tail with one.

    `spec`, when given, replaces `use_cache`. `kv` is the cache behind one interface (see
    `DynamicKV`), `cache` transformers' object inside it. With `spec.compile` (chapter 10) the
    calls of `compiled_lengths` tokens run compiled; the others (the prompt, a short last step, a
    tree) run eagerly, so that no new shape ever triggers a recompile. `role` names the static
    cache it takes (see `static_cache`).
    """

    def __init__(
        self, model: PreTrainedModel, use_cache: bool = True, croppable: bool = True, *,
        spec: CacheSpec | None = None, compiled_lengths: Sequence[int] = (1,), role: str = "target",
    ):
        self.model = model
        self.spec = spec or CacheSpec(use_cache=use_cache)
        self.kv = kv_cache(model, self.spec, croppable, role)
        self.compiled = compiled_call(model) if self.spec.compile else None
        self.compiled_lengths = frozenset(compiled_lengths)
        self.calls = 0

    @property
    def cache(self) -> DynamicCache | StaticCache | None:
        """transformers' cache object (its `.layers` hold the keys and values), or None without a cache."""
        return None if self.kv is None else self.kv.cache

    @property
    def cached_length(self) -> int:
        """How many leading positions of the sequence the cache already holds."""
        return 0 if self.kv is None else self.kv.length

    @property
    def capacity(self) -> int | None:
        """The most positions a static cache can hold (None: a dynamic cache grows)."""
        return None if self.kv is None else self.kv.capacity

    @torch.inference_mode()  # a runner only decodes; callers outside the loop need no context manager
    def forward(
        self, seq: torch.Tensor, keep: int = 1, hidden: Sequence[int] | None = None, **tree_inputs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass over seq (1, L): logits of the last `keep` positions (keep, V), and with `hidden` (layer
        indices, `pick_hidden`) those hidden states of every position fed in this call (n_fed, len(hidden) * d).

        `tree_inputs` (position_ids, a 4D attention_mask) go to the model as given: chapter 09's trees.
        """
        # (1, n) with standard strides: a slice of seq would carry seq's length in its stride, and a
        # compiled call guards on strides, so it would recompile every step.
        start = self.cached_length
        new = seq[0, start:].unsqueeze(0).to(self.model.device)
        n = new.shape[1]
        if self.capacity is not None and start + n > self.capacity:
            raise ValueError(f"the static cache holds {self.capacity} positions; this call needs {start + n}")
        compiled = self.compiled is not None and start > 0 and n in self.compiled_lengths and not tree_inputs
        call = self.compiled if compiled else self.model
        out = call(input_ids=new, cache=self.cache, use_cache=self.cache is not None,
                   logits_to_keep=keep, output_hidden_states=hidden is not None, **tree_inputs)
        self.calls += 1
        if self.kv is not None:
            self.kv.fed(n)
        logits, states = out.logits[0, -keep:], None if hidden is None else pick_hidden(out.hidden_states, hidden)[0]
        if compiled:  # a CUDA graph's outputs are overwritten by its next replay: keep our own copy
            logits, states = logits.clone(), None if states is None else states.clone()
        return logits, states

    def logits(self, seq: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Run one forward pass over seq (1, L) and return the logits of its last `keep` positions, (keep, V)."""
        return self.forward(seq, keep)[0]

    def rollback(self, length: int) -> None:
        """Forget every cached position from `length` on, e.g. those of rejected draft tokens."""
        if self.kv is not None:
            self.kv.rollback(length)

    def keep(self, n_tail: int, kept: Sequence[int]) -> None:
        """Of the last n_tail cached positions keep those at `kept` (a chain's prefix, a tree's accepted path)."""
        if self.kv is not None:
            self.kv.keep(n_tail, kept)
