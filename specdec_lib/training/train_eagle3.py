"""Chapter 08: train an EAGLE-3 head (`models/eagle3_head.py`) with training-time test, on the chunked corpus.

    python -m specdec_lib.training features --corpus data/eagle3_corpus --store /tmp/eagle3_states   # resumable
    python -m specdec_lib.training eagle3 --corpus data/eagle3_corpus --store /tmp/eagle3_states --out my_eagle3

Training-time test: drafting feeds the head its own hidden states after the first draft, so training
does too. Step 0 reads the target's fused features at every position j with token j + 1 and predicts
token j + 2; step i reads, at the same j, the hidden the head itself produced at step i - 1 and token
j + 1 + i, and predicts token j + 2 + i. Its attention sees what drafting would: the keys of the
true context up to j (step 0's) and the keys of its own earlier steps at j (one each). Position ids
move on by one per step. The tokens fed are the corpus's (the draft's own guesses when they were
right, which is all that acceptance needs).

Loss: each step's soft cross-entropy to the target's next-token distribution, weighted 0.8^i
(EAGLE-3), at positions whose target token is in the draft vocabulary and lies in the continuation
(the prompt's text is not the target's). The distribution is the target's top 32 logits at that
position (stored by the feature pass), restricted to the draft vocabulary and renormalised: the
sparse form costs a gather instead of a pass over 8,192 ids per position. No feature loss.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..models.eagle3_head import Eagle3Head
from .chunked_corpus import Row, chunk_path, load_chunk
from .evaluate import TOP_K, eagle3_agreement, heldout_states, target_states
from .train_draft import lr_at, optimizer_step


# ---------------------------------------------------------------- training-time test


def ttt_targets(lengths: torch.Tensor, n_prompt: torch.Tensor, width: int, steps: int) -> list[torch.Tensor]:
    """Entry i: (B, width) bool, where step i's prediction at j (token j + 2 + i) is scored: its label position
    j + 1 + i exists and the token it predicts is past the prompt."""
    j = torch.arange(width, device=lengths.device)[None]
    return [(j + 1 + i < lengths[:, None]) & (j + 2 + i >= n_prompt[:, None]) for i in range(steps)]


def sparse_labels(top_ids: torch.Tensor, top_logits: torch.Tensor, draft_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top-k (..., k) as (draft-vocabulary indices, probabilities over them): ids outside the
    draft vocabulary get probability 0 (index 0), the rest are renormalised."""
    index = draft_index[top_ids]
    logits = top_logits.float().masked_fill(index < 0, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row with no id in the vocabulary: all zeros
    return index.clamp(min=0), probs


def soft_cross_entropy(logits: torch.Tensor, index: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_k probs_k log softmax(logits)[index_k]: the full softmax's normaliser, a sparse target."""
    logits = logits.float()
    return (torch.logsumexp(logits, dim=-1) - (probs * logits.gather(-1, index)).sum(-1)).mean()


def ttt_loss(
    head: Eagle3Head, hiddens: Sequence[torch.Tensor], labels: tuple[torch.Tensor, torch.Tensor],
    scored: Sequence[torch.Tensor], decay: float = 0.8,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """sum_i decay^i * soft cross-entropy of step i, and each step's draft-vocabulary logits where it is scored.

    `labels` (index, probs), each (B, L + steps, k), is the target's distribution at each position (over the
    next token), so step i at j is scored against labels[:, j + 1 + i]. Logits are made only where scored:
    the head's 8k-row output layer is half of its cost, and prompt positions need none.
    """
    total, logits = 0.0, []
    for i, (hidden, mask) in enumerate(zip(hiddens, scored)):
        rows, cols = mask.nonzero(as_tuple=True)
        out = head.sub_logits(hidden[rows, cols])
        if len(out):
            total = total + decay**i * soft_cross_entropy(out, labels[0][rows, cols + 1 + i], labels[1][rows, cols + 1 + i])
        logits.append(out)
    return total, logits


# ---------------------------------------------------------------- the target's features, stored per chunk


@dataclass
class StoredChunk:
    """One chunk's rows and the target's states at every position, memory-mapped (float16)."""

    rows: list[Row]
    starts: np.ndarray  # (n_rows,) where each row's positions start
    aux: np.ndarray  # (N, len(layers) * d): the hidden states the head fuses
    top_ids: np.ndarray  # (N, TOP_K) int32: the target's highest-scoring ids at each position, best first
    top_logits: np.ndarray  # (N, TOP_K) float16: their logits


STATE_FILES = ("aux", "top_logits", "top_ids")  # top_ids last: its presence says a chunk is complete


def _state_paths(store: Path, chunk: int) -> dict[str, Path]:
    """The files of one chunk's stored states."""
    return {name: store / f"chunk_{chunk:05d}.{name}.npy" for name in STATE_FILES}


def check_store_layers(store: str | Path, layers: Sequence[int]) -> None:
    """A clear error when the states in `store` come from other target layers than `layers` (a head would train on the wrong ones)."""
    layers_file = Path(store) / "layers.txt"
    if layers_file.exists() and layers_file.read_text().split() != [str(x) for x in layers]:
        raise ValueError(f"{store} holds states of layers {layers_file.read_text().split()}, not {list(layers)}")


def build_features(
    target: PreTrainedModel, corpus: str | Path, store: str | Path, chunks: Sequence[int], layers: Sequence[int],
    progress: bool = True,
) -> None:
    """Store the target's states for every chunk in `chunks` not stored yet (resumable, one chunk at a time)."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    layers_file = store / "layers.txt"
    check_store_layers(store, layers)
    layers_file.write_text(" ".join(str(x) for x in layers) + "\n")
    todo = [c for c in chunks if not _state_paths(store, c)["top_ids"].exists()]
    d = target.config.hidden_size
    for c in tqdm(todo, desc="target states", unit="chunk", disable=not progress):
        rows = load_chunk(chunk_path(corpus, c))
        total = sum(len(r.tokens) for r in rows)
        paths = _state_paths(store, c)
        partial = {k: p.with_suffix(".part.npy") for k, p in paths.items()}
        shapes = {"aux": (np.float16, len(layers) * d), "top_logits": (np.float16, TOP_K), "top_ids": (np.int32, TOP_K)}
        arrays = {name: np.lib.format.open_memmap(partial[name], mode="w+", dtype=dtype, shape=(total, width))
                  for name, (dtype, width) in shapes.items()}
        starts = np.concatenate([[0], np.cumsum([len(r.tokens) for r in rows])[:-1]])
        for i, *states in target_states(target, [torch.tensor(r.tokens) for r in rows], layers):
            s = slice(starts[i], starts[i] + len(rows[i].tokens))
            for name, state in zip(STATE_FILES, states):
                arrays[name][s] = state.cpu().numpy().astype(shapes[name][0])
        for array in arrays.values():
            array.flush()
        del arrays
        for name in STATE_FILES:
            partial[name].rename(paths[name])


def stored_chunks(corpus: str | Path, store: str | Path) -> list[int]:
    """Chunks whose states are stored, in order."""
    return sorted(int(p.name.split("_")[1].split(".")[0]) for p in Path(store).glob("chunk_*.top_ids.npy"))


def open_chunk(corpus: str | Path, store: str | Path, chunk: int) -> StoredChunk:
    """A chunk's rows and its stored states, memory-mapped."""
    rows = load_chunk(chunk_path(corpus, chunk))
    paths = _state_paths(Path(store), chunk)
    starts = np.concatenate([[0], np.cumsum([len(r.tokens) for r in rows])[:-1]])
    return StoredChunk(rows, starts, *(np.load(paths[k], mmap_mode="r") for k in ("aux", "top_ids", "top_logits")))


# ---------------------------------------------------------------- batches


@dataclass(frozen=True)
class Item:
    """One training sequence: which chunk, which row."""

    chunk: int
    row: int
    length: int


def is_validation(chunk: int, row: int, every: int = 50) -> bool:
    """Every `every`-th row of each chunk is held aside (never trained on): early stopping reads it."""
    return (row + 7 * chunk) % every == 0


def corpus_items(chunks: dict[int, StoredChunk], validation: bool, every: int = 50) -> list[Item]:
    """The training (or held-aside) sequences of these chunks."""
    return [Item(c, r, len(row.tokens)) for c, stored in chunks.items() for r, row in enumerate(stored.rows)
            if is_validation(c, r, every) == validation and len(row.tokens) > row.n_prompt]


def make_batches(items: Sequence[Item], batch_tokens: int, generator: torch.Generator) -> list[list[Item]]:
    """Shuffled batches of similar-length sequences, each at most `batch_tokens` padded tokens (one epoch)."""
    noisy = torch.rand(len(items), generator=generator).tolist()  # ties broken at random, so epochs differ
    order = sorted(range(len(items)), key=lambda i: (items[i].length // 16, noisy[i]))
    batches, current, width = [], [], 0
    for i in order:
        if current and (len(current) + 1) * max(width, items[i].length) > batch_tokens:
            batches.append(current)
            current, width = [], 0
        current.append(items[i])
        width = max(width, items[i].length)
    if current:
        batches.append(current)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def load_batch(batch: Sequence[Item], chunks: dict[int, StoredChunk]) -> dict[str, torch.Tensor]:
    """Right-padded tokens, the target's chosen states, its top-k ids and logits, lengths and prompt lengths of a batch."""
    width = max(item.length for item in batch)
    stored = chunks[batch[0].chunk]
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    aux = torch.zeros(len(batch), width, stored.aux.shape[1], dtype=torch.float16)
    top_ids = torch.zeros(len(batch), width, TOP_K, dtype=torch.long)
    top_logits = torch.zeros(len(batch), width, TOP_K, dtype=torch.float16)
    for b, item in enumerate(batch):
        stored = chunks[item.chunk]
        row, s = stored.rows[item.row], int(stored.starts[item.row])
        n = item.length
        tokens[b, :n] = torch.tensor(row.tokens)
        aux[b, :n] = torch.from_numpy(np.array(stored.aux[s : s + n]))
        top_ids[b, :n] = torch.from_numpy(np.array(stored.top_ids[s : s + n]).astype(np.int64))
        top_logits[b, :n] = torch.from_numpy(np.array(stored.top_logits[s : s + n]))
    return {"tokens": tokens, "aux": aux, "top_ids": top_ids, "top_logits": top_logits,
            "lengths": torch.tensor([i.length for i in batch]),
            "n_prompt": torch.tensor([chunks[i.chunk].rows[i.row].n_prompt for i in batch])}


def state_rms(chunks: dict[int, StoredChunk], positions: int = 20_000) -> torch.Tensor:
    """The RMS of each stored state dimension over the first `positions` positions of the first chunk (for fc's init)."""
    first = chunks[min(chunks)]
    sample = torch.from_numpy(np.array(first.aux[:positions])).float()
    return sample.pow(2).mean(0).sqrt()


def _greedy_picks(stored: StoredChunk) -> np.ndarray:
    """The target's greedy choice at every position whose next token is a continuation token (the draft's job)."""
    return np.concatenate([np.asarray(stored.top_ids[s + row.n_prompt - 1 : s + len(row.tokens) - 1, 0])
                           for row, s in zip(stored.rows, stored.starts) if len(row.tokens) > row.n_prompt])


def draft_vocabulary(chunks: dict[int, StoredChunk], size: int, vocab_size: int) -> torch.Tensor:
    """The `size` ids the target most often picks greedily in these chunks' continuations, sorted (EAGLE-3's
    draft vocabulary: a frequency cut of what the head must predict)."""
    counts = sum(np.bincount(_greedy_picks(stored), minlength=vocab_size) for stored in chunks.values())
    if np.count_nonzero(counts) < size:
        raise ValueError(f"the corpus has {np.count_nonzero(counts)} distinct greedy tokens, fewer than a vocabulary of {size}")
    return torch.from_numpy(np.sort(np.argsort(-counts, kind="stable")[:size]))


def vocabulary_coverage(chunks: dict[int, StoredChunk], vocab_ids: torch.Tensor, vocab_size: int) -> float:
    """Share of the target's greedy choices in these chunks' continuations that the draft vocabulary holds."""
    inside = np.zeros(vocab_size, dtype=bool)
    inside[vocab_ids.numpy()] = True
    picks = np.concatenate([_greedy_picks(stored) for stored in chunks.values()])
    return float(inside[picks].mean())


# ---------------------------------------------------------------- training


def training_runs(record: dict) -> list[dict]:
    """The training runs behind a head, oldest first: each `--init` record it started from, then its own."""
    earlier = record.get("init")
    return (training_runs(earlier) if isinstance(earlier, dict) else []) + [record]


@dataclass
class Eagle3Config:
    """Everything that determines an EAGLE-3 training run."""

    ttt_steps: int = 4  # unrolled draft steps (EAGLE-3 uses 7; the course's best chains here draft 2-4 deep)
    decay: float = 0.8  # weight of step i: decay^i
    epochs: float = 1.5
    # ~2,000 positions a step at lr 2e-3: the shipped head's run had held-out agreement 0.34 after 560k positions,
    # where a first run with 4,096-token steps at lr 1e-3 (on 150k positions, 5 steps unrolled) had 0.26 after 600k.
    batch_tokens: int = 2048
    lr: float = 2e-3
    warmup: int = 50
    eval_every: int = 100
    patience: int = 4  # stop after this many evaluations without a better held-aside agreement
    bf16: bool = True  # autocast the head's matrix products to bfloat16 on CPU (about 2x here)
    seed: int = 0


def _autocast(head: Eagle3Head, enabled: bool):
    """bfloat16 autocast on the head's device type (a no-op context when disabled)."""
    return torch.autocast(head.device.type, dtype=torch.bfloat16, enabled=enabled)


def batch_loss(head: Eagle3Head, draft_index: torch.Tensor, batch: dict[str, torch.Tensor], config: Eagle3Config
               ) -> tuple[torch.Tensor, list[float]]:
    """The unrolled loss of one batch, and each step's greedy agreement with the target where it is scored."""
    device, steps = head.device, config.ttt_steps
    tokens, lengths, n_prompt = batch["tokens"].to(device), batch["lengths"].to(device), batch["n_prompt"].to(device)
    top_ids = batch["top_ids"].to(device)
    index, probs = sparse_labels(top_ids, batch["top_logits"].to(device), draft_index)
    labels = (F.pad(index, (0, 0, 0, steps)), F.pad(probs, (0, 0, 0, steps)))  # room for j + 1 + i past the end
    best = F.pad(top_ids[..., 0], (0, steps))  # the target's greedy choice at each position
    in_vocab = draft_index[best] >= 0  # EAGLE-3 scores only these
    width = tokens.shape[1]
    scored = [m & in_vocab[:, 1 + i : 1 + i + width] for i, m in enumerate(ttt_targets(lengths, n_prompt, width, steps))]
    with _autocast(head, config.bf16):
        hiddens = head.unrolled(head.fuse(batch["aux"].to(device)), tokens, steps)
        loss, logits = ttt_loss(head, hiddens, labels, scored, config.decay)
    with torch.no_grad():
        acc = [float((head.vocab_ids[out.argmax(-1)] == best[:, 1 + i : 1 + i + width][m]).float().mean())
               if len(out) else math.nan for i, (out, m) in enumerate(zip(logits, scored))]
    return loss, acc


def draft_vocab_index(head: Eagle3Head) -> torch.Tensor:
    """(V_target,) long: each target id's index in the head's draft vocabulary, -1 where it has none (EAGLE-3's t2d)."""
    index = torch.full((head.config.vocab_size,), -1, dtype=torch.long, device=head.device)
    index[head.vocab_ids] = torch.arange(len(head.vocab_ids), device=head.device)
    return index


def _validation_set(chunks: dict[int, StoredChunk], items: Sequence[Item]) -> tuple[list, list, list]:
    """(tokens, fused-layer states, first continuation index) of held-aside corpus rows, for `eagle3_agreement`."""
    tokens, feats, first = [], [], []
    for item in items:
        stored = chunks[item.chunk]
        row, s = stored.rows[item.row], int(stored.starts[item.row])
        tokens.append(torch.tensor(row.tokens))
        feats.append(torch.from_numpy(np.array(stored.aux[s : s + item.length])).float())
        first.append(row.n_prompt)
    return tokens, feats, first


def train_eagle3(
    target: PreTrainedModel,
    head: Eagle3Head,
    chunks: dict[int, StoredChunk],
    config: Eagle3Config,
    held_out: tuple[list[torch.Tensor], list[torch.Tensor], list[int]] | None = None,
    max_validation: int = 400,
    progress: bool = True,
) -> tuple[Eagle3Head, list[dict]]:
    """Train `head` in place (then restored to its best held-aside checkpoint); return it and the log.

    `held_out`: (sequences, fused states, prompt lengths) of held-out prompts' greedy continuations,
    scored at every evaluation but never used to choose the checkpoint.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    draft_index = draft_vocab_index(head)
    train_items = corpus_items(chunks, validation=False)
    val = _validation_set(chunks, corpus_items(chunks, validation=True)[:max_validation])
    head.model.embed_tokens.weight.requires_grad_(False)  # the target's, shared and frozen
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    batches_per_epoch = len(make_batches(train_items, config.batch_tokens, torch.Generator().manual_seed(0)))
    total = max(1, int(config.epochs * batches_per_epoch))

    def evaluate(step: int, **extra) -> dict:
        head.eval()
        entry = {"step": step, "positions_seen": extra.pop("positions_seen", 0), **extra}
        entry["val"] = eagle3_agreement(head, *val, steps=config.ttt_steps)
        if held_out is not None:
            entry["heldout"] = eagle3_agreement(head, *held_out, steps=config.ttt_steps)
        head.train()
        return entry

    log = [evaluate(0)]
    best = (log[0]["val"][0], copy.deepcopy(head.state_dict()), 0)
    bar = tqdm(total=total, desc="training the EAGLE-3 head", disable=not progress)
    step, seen, since_best, start = 0, 0, 0, time.perf_counter()
    epoch_batches: list[list[Item]] = []
    head.train()
    while step < total and since_best < config.patience:
        if not epoch_batches:
            epoch_batches = make_batches(train_items, config.batch_tokens, generator)
        batch = load_batch(epoch_batches.pop(), chunks)
        loss, acc = batch_loss(head, draft_index, batch, config)
        optimizer_step(optimizer, params, loss, lr_at(step, config, total))
        step += 1
        seen += int(batch["lengths"].sum())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc0=f"{acc[0]:.2f}", val=f"{log[-1]['val'][0]:.3f}")
        if step % config.eval_every == 0 or step == total:
            log.append(evaluate(step, positions_seen=seen, loss=loss.item(), train_acc=acc,
                                minutes=round((time.perf_counter() - start) / 60, 1)))
            if log[-1]["val"][0] > best[0]:
                best, since_best = (log[-1]["val"][0], copy.deepcopy(head.state_dict()), step), 0
            else:
                since_best += 1
            if progress:
                e = log[-1]
                tqdm.write(f"step {step}: loss {e['loss']:.3f}, held-aside agreement "
                           + " / ".join(f"{a:.3f}" for a in e["val"][:3])
                           + ("" if held_out is None else ", held-out " + " / ".join(f"{a:.3f}" for a in e["heldout"][:3])))
    bar.close()
    head.load_state_dict(best[1])
    log.append({"kept_step": best[2]})
    return head.eval(), log
