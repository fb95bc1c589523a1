"""Chapter 11: many requests at once. One speculative step over a batch whose rows accept different numbers of drafts.

The layout is transformers' left padding, kept up all the way: every row's tokens, and its cache
entries, sit at the right end of one rectangular tensor, padding in front (attention_mask 0).
- One call feeds every row the same number of new tokens: each row's newest token and the drafts.
- Each row then keeps its own accepted prefix (ragged acceptance). `realign` moves every row's
  kept entries back to the right end in one gather, so the rows end at the same column again,
  and a row's cache always holds exactly its own tokens, as if it were decoded alone.
- Position ids follow each row's real tokens; the 2D attention mask hides the padding.
- A finished row leaves the batch (`select`, compaction): it costs no more compute.
BASS (Qian et al., 2024) pads ragged rows the same way; vLLM flattens them instead (`cu_num_draft_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import CacheLayerMixin, StaticLayer

from .drafter import Proposal, hidden_request
from .kv_cache import CacheSpec, full_static_cache, pick_hidden
from .sampling import Sampler
from .step import Rule, StepRecord


def realign(x: torch.Tensor, dim: int, starts: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    """Row b's slice starts[b] : starts[b] + lengths[b] of x along `dim`, moved to the right end of a max(lengths)-wide result.

    What lies in front of a shorter row is arbitrary (masked by the caller). One gather for every row.
    """
    width = max(lengths)
    start = torch.as_tensor(starts, device=x.device) - width + torch.as_tensor(lengths, device=x.device)
    index = (start[:, None] + torch.arange(width, device=x.device)).clamp_(0, max(x.shape[dim] - 1, 0))
    view = [1] * x.dim()
    view[0], view[dim] = x.shape[0], width
    size = list(x.shape)
    size[dim] = width
    return x.gather(dim, index.view(view).expand(size))


def left_pad(rows: Sequence[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a left-padded batch of 1D token rows, as a tokenizer pads for generation."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row):], mask[b, width - len(row):] = row.view(-1), 1
    return ids, mask


@dataclass
class Rows:
    """A batch of token sequences of different lengths, right-aligned in one (B, W) tensor: left padding, `pad` in front."""

    tokens: torch.Tensor
    lengths: list[int]
    pad: int = 0

    @classmethod
    def from_padded(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad: int = 0) -> "Rows":
        """Rows from a left-padded batch and its attention mask (1 = real token), as a tokenizer pads for generation."""
        return cls(input_ids, [int(n) for n in attention_mask.sum(dim=1).tolist()], pad)

    @property
    def size(self) -> int:
        """Number of rows, B."""
        return self.tokens.shape[0]

    @property
    def width(self) -> int:
        """Columns of the tensor: the longest row's length."""
        return self.tokens.shape[1]

    def row(self, b: int) -> torch.Tensor:
        """Row b's own tokens, (L_b,), without padding."""
        return self.tokens[b, self.width - self.lengths[b]:]

    def last(self, n: int) -> torch.Tensor:
        """The last n tokens of every row, (B, n): the right end, where every row ends."""
        return self.tokens[:, self.width - n:]

    def mask(self) -> torch.Tensor:
        """The attention mask, (B, W): 1 on real tokens, 0 on padding."""
        lengths = torch.as_tensor(self.lengths, device=self.tokens.device)
        return (torch.arange(self.width, device=self.tokens.device) >= self.width - lengths[:, None]).long()

    def append(self, new: Sequence[Sequence[int]] | torch.Tensor) -> "Rows":
        """These rows with row b's new tokens after it: a (B, m) tensor for all alike, or one list per row."""
        if isinstance(new, torch.Tensor):  # every row grows alike: nothing to realign
            return Rows(torch.cat([self.tokens, new.to(self.tokens)], dim=1), [n + new.shape[1] for n in self.lengths], self.pad)
        counts = [len(t) for t in new]
        if len(set(counts)) == 1:
            return self.append(torch.as_tensor([list(t) for t in new], dtype=self.tokens.dtype).view(self.size, counts[0]))
        extra = torch.full((self.size, max(counts)), self.pad, dtype=self.tokens.dtype)
        for b, t in enumerate(new):
            extra[b, : len(t)] = torch.as_tensor(t, dtype=self.tokens.dtype)
        joined = torch.cat([self.tokens, extra.to(self.tokens.device)], dim=1)
        lengths = [n + c for n, c in zip(self.lengths, counts)]
        rows = Rows(realign(joined, 1, [self.width - n for n in self.lengths], lengths), lengths, self.pad)
        return rows.masked()

    def masked(self) -> "Rows":
        """The same rows with every padding slot set to `pad` (realign leaves them arbitrary)."""
        return Rows(torch.where(self.mask().bool(), self.tokens, self.pad), self.lengths, self.pad)

    def select(self, rows: Sequence[int]) -> "Rows":
        """Only these rows (in this order), with columns of padding shared by all of them dropped."""
        lengths = [self.lengths[b] for b in rows]
        return Rows(self.tokens[list(rows), self.width - max(lengths, default=0):], lengths, self.pad)


def batch_cache(model: PreTrainedModel, spec: CacheSpec) -> DynamicCache:
    """An empty cache for a batch: dynamic, or static of spec.max_length; every layer full-length, windows applied by the mask.

    A row's kept entries move within a layer (`realign`), so a sliding-window layer must hold all of
    them too; the model's mask applies the window from positions anyway.
    """
    if spec.implementation == "static":
        if spec.max_length is None:
            raise ValueError("a static cache needs spec.max_length, the most positions the run will hold")
        return full_static_cache(model, spec.max_length)  # a fresh one: its batch size is fixed when first written
    probe = DynamicCache(config=model.config)
    if not all(isinstance(layer, CacheLayerMixin) for layer in probe.layers):
        raise NotImplementedError(f"{model.config.model_type} has linear-attention layers; batches need attention layers only")
    return DynamicCache()  # every layer a full DynamicLayer


class BatchKV:
    """One cache for a batch whose rows hold different numbers of positions: row b's are its last lengths[b] columns.

    The batch counterpart of `DynamicKV`/`StaticKV`: `inputs` makes a call's mask and positions,
    `fed` counts what it wrote, `keep` gives each row its own length, `select` drops rows.
    """

    def __init__(self, cache: DynamicCache, capacity: int | None = None):
        self.cache, self.capacity = cache, capacity
        self.width = 0  # columns in use (every row ends at the last one)
        self.lengths: list[int] | None = None  # None until the first call says how many rows there are

    @torch.inference_mode()
    def inputs(self, n: int, real: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention_mask, position_ids) for a call feeding n more columns, the last real[b] of them real in row b."""
        lengths = self.lengths or [0] * len(real)
        if any(r < n and held for r, held in zip(real, lengths)):
            raise ValueError("only a row with nothing cached yet may feed padding (it must stay in front of its tokens)")
        columns = self.width + n
        if self.capacity is not None and columns > self.capacity:
            raise ValueError(f"the static cache holds {self.capacity} positions; this call needs {columns}")
        total = torch.as_tensor([h + r for h, r in zip(lengths, real)], device=device)
        mask = torch.arange(self.capacity or columns, device=device) >= columns - total[:, None]
        held = torch.as_tensor(lengths, device=device)[:, None]
        skip = torch.as_tensor([n - r for r in real], device=device)[:, None]
        positions = (held + torch.arange(n, device=device) - skip).clamp_min(0)
        return mask.long(), positions

    def fed(self, n: int, real: Sequence[int]) -> None:
        """A call wrote n more columns, real[b] of them real in row b."""
        self.width += n
        self.lengths = [h + r for h, r in zip(self.lengths or [0] * len(real), real)]

    def _layers(self) -> list[CacheLayerMixin]:
        """The layers holding entries."""
        return [layer for layer in self.cache.layers if getattr(layer, "is_initialized", False)]

    @torch.inference_mode()  # the cache's tensors were made in inference mode; in-place writes must be too
    def keep(self, lengths: Sequence[int]) -> None:
        """Row b keeps its first lengths[b] positions (at most what it holds); the rows end at one column again."""
        lengths = list(lengths)
        held = self.lengths or [0] * len(lengths)
        if any(n > h or n < 0 for n, h in zip(lengths, held)):
            raise ValueError(f"a row can only keep positions it holds: {lengths} of {held}")
        drop = {h - n for n, h in zip(lengths, held)}
        width = max(lengths, default=0)
        if len(drop) == 1 and self.width - width == drop.pop():  # every row drops as many: a plain crop
            if self.width > width:
                self.cache.crop(width - self.width)
        else:
            starts = self._starts(held, lengths)
            for layer in self._layers():
                keys, values = (realign(t[:, :, : self.width], 2, starts, lengths) for t in (layer.keys, layer.values))
                self._write(layer, keys, values, width)
        self.width, self.lengths = width, lengths

    def _starts(self, held: Sequence[int], lengths: Sequence[int]) -> list[int]:
        """The column where each row's kept entries begin: its first position (it keeps a prefix of lengths[b])."""
        return [self.width - h for h in held]

    @staticmethod
    def _write(layer: CacheLayerMixin, keys: torch.Tensor, values: torch.Tensor, width: int) -> None:
        """Put a layer's realigned entries in place: a static layer copies them into its buffers."""
        if isinstance(layer, StaticLayer):
            layer.keys[:, :, :width].copy_(keys)
            layer.values[:, :, :width].copy_(values)
            layer.cumulative_length.fill_(width)
        else:
            layer.keys, layer.values = keys, values

    def align(self, lengths: Sequence[int]) -> int:
        """Roll rows back so each has as many positions of `lengths` uncached as the row furthest behind (all, if a row
        is too short); return that count."""
        held = self.lengths or [0] * len(lengths)
        if any(n < h for n, h in zip(lengths, held)):
            raise ValueError("the cache holds more than the rows: commit after every verification")
        behind = max(n - h for n, h in zip(lengths, held))
        target = [n - behind for n in lengths]
        self.keep([0] * len(lengths) if min(target) < 0 else target)
        return max(n - h for n, h in zip(lengths, self.lengths))

    @torch.inference_mode()
    def select(self, rows: Sequence[int]) -> None:
        """Keep only these rows (compaction: finished rows stop costing compute), then drop shared padding."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))
            layer.values = layer.values.index_select(0, index.to(layer.values.device))
        self.lengths = [self.lengths[b] for b in rows]
        self.keep(self.lengths)  # realigns only if the longest rows left


class BatchRunner:
    """Feeds a model a batch of growing rows: each call feeds every row its uncached tail (the same count for all), plus extra tokens."""

    def __init__(self, model: PreTrainedModel, spec: CacheSpec, role: str = "target"):
        if not spec.use_cache:
            raise ValueError("a batch decodes with a cache; use_cache=False is for one row only")
        if spec.compile:
            raise NotImplementedError("compiled calls are for one row; a batch runs eagerly (use compile=False)")
        self.model, self.spec, self.role = model, spec, role
        self.kv = BatchKV(batch_cache(model, spec), spec.max_length if spec.implementation == "static" else None)
        self.calls = 0

    @torch.inference_mode()
    def forward(
        self, rows: Rows, extra: torch.Tensor | None = None, keep: int = 1, hidden: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One call over every row's uncached tail then `extra` (B, m): logits of the last `keep` columns (B, keep, V),
        and with `hidden` (layer indices, `pick_hidden`) those states of every column fed (B, n, len(hidden) * d)."""
        self.align(rows)
        held = self.kv.lengths
        if held is None or self.kv.width == 0:  # nothing cached: feed the rows whole (the prefill)
            new, real = rows.tokens, list(rows.lengths)
        else:
            n = rows.lengths[0] - held[0]
            new, real = rows.last(n), [n] * rows.size
        if extra is not None:
            new, real = torch.cat([new, extra.to(new)], dim=1), [r + extra.shape[1] for r in real]
        device = self.model.device
        mask, positions = self.kv.inputs(new.shape[1], real, device)
        out = self.model(input_ids=new.to(device), attention_mask=mask, position_ids=positions, cache=self.kv.cache,
                         use_cache=True, logits_to_keep=keep, output_hidden_states=hidden is not None)
        self.calls += 1
        self.kv.fed(new.shape[1], real)
        return out.logits[:, -keep:], None if hidden is None else pick_hidden(out.hidden_states, hidden)

    def align(self, rows: Rows) -> None:
        """Roll rows back so that each has the same number of tokens not yet cached (all of them, if a row is too short)."""
        if self.kv.lengths is not None:
            self.kv.align(rows.lengths)

    def commit(self, rows: Rows) -> None:
        """After a verification: keep what still agrees with each row, everything but its newest token at most."""
        if self.kv.lengths is None:  # never called (a drafter that skipped every call so far)
            return
        self.kv.keep([min(h, n - 1) for h, n in zip(self.kv.lengths, rows.lengths)])

    def select(self, rows: Sequence[int]) -> None:
        """Keep only these rows."""
        if self.kv.lengths is not None:
            self.kv.select(rows)


@dataclass
class BatchProposal:
    """Drafts for every row: (B, m) tokens, row b's first counts[b] real (the rest padding), and q (B, m, V) when sampling."""

    tokens: torch.Tensor
    counts: list[int]
    probs: torch.Tensor | None = None

    @classmethod
    def empty(cls, rows: Rows) -> "BatchProposal":
        """No drafts in any row: the step is a plain batched step."""
        return cls(torch.empty((rows.size, 0), dtype=torch.long, device=rows.tokens.device), [0] * rows.size)

    @classmethod
    def ragged(cls, drafts: Sequence[torch.Tensor], pad: int, device: torch.device) -> "BatchProposal":
        """Deterministic drafts of different lengths per row, padded at the end."""
        counts = [int(d.numel()) for d in drafts]
        tokens = torch.full((len(drafts), max(counts, default=0)), pad, dtype=torch.long, device=device)
        for b, d in enumerate(drafts):
            tokens[b, : counts[b]] = d
        return cls(tokens, counts)

    def row(self, b: int) -> Proposal:
        """Row b's drafts as a one-row proposal, for the acceptance rule."""
        n = self.counts[b]
        return Proposal(self.tokens[b, :n], None if self.probs is None else self.probs[b, :n])

    def capped(self, room: Sequence[int]) -> "BatchProposal":
        """At most room[b] drafts in row b (a row near its token budget); the extra columns dropped when no row needs them."""
        counts = [min(c, r) for c, r in zip(self.counts, room)]
        m = max(counts, default=0)
        return BatchProposal(self.tokens[:, :m], counts, None if self.probs is None else self.probs[:, :m])


@dataclass
class BatchVerified:
    """What the target's batched verification computed, handed to the drafter after every step."""

    logits: torch.Tensor  # (B, m + 1, V)
    hidden: torch.Tensor | None  # (B, n_fed, d): last hidden states of the columns fed, if asked for
    lengths_before: list[int]  # each row's length before the step: its column n_fed - 1 - m is position lengths_before - 1


@runtime_checkable
class BatchDrafter(Protocol):
    """A drafter that can draft for every row of a batch at once (chapter 11)."""

    def start_batch(self, target: PreTrainedModel, rows: Rows, *, cache: CacheSpec = CacheSpec()) -> None:
        """Forget any previous run and get ready to draft after every row of `rows`."""

    def propose_batch(self, rows: Rows, k: int, sampler: Sampler) -> BatchProposal:
        """Up to k drafts per row."""

    def update_batch(self, rows: Rows, records: Sequence[StepRecord], verified: BatchVerified) -> None:
        """After verification: `records[b]` says what passed in row b, and `rows` are the sequences now."""

    def select_rows(self, rows: Sequence[int]) -> None:
        """Only these rows go on."""


@torch.inference_mode()
def batch_step(
    runner: BatchRunner, drafter: BatchDrafter, rows: Rows, rule: Rule, sampler: Sampler, *,
    k: int, room: Sequence[int],
) -> tuple[list[StepRecord], Rows]:
    """One round for a batch: draft, verify every row in one target call, each row keeps what passed; (records, new rows).

    room[b]: the most drafts row b may still accept (its token budget less one).
    """
    proposal = drafter.propose_batch(rows, k, sampler).capped(room) if k > 0 else BatchProposal.empty(rows)
    m, before = proposal.tokens.shape[1], list(rows.lengths)
    logits, states = runner.forward(rows, proposal.tokens, keep=m + 1, hidden=hidden_request(drafter))
    if m == 0:  # nothing drafted in any row: a plain step, every row's token chosen at once
        records = [StepRecord([], 0, t) for t in sampler.choose(logits[:, 0])[0].tolist()]
    else:  # the same rule as one row's, row by row: each row accepts its own number of drafts
        records = [rule.judge(proposal.row(b), logits[b, : proposal.counts[b] + 1], sampler) for b in range(rows.size)]
    rows = rows.append([record.new_tokens for record in records])
    runner.commit(rows)  # each row's cache: its own text but the newest token
    drafter.update_batch(rows, records, BatchVerified(logits, states, before))
    return records, rows
