"""Chapter 08 (EAGLE-3): a large self-distilled corpus, built in chunks that are each reproducible from a seed.

    python -m specdec_lib.training corpus --out data/eagle3_corpus --chunks 0:48 [--minutes 120]

Chunk c is made from seed c alone: its prompts (templates over many topics, code and docstrings from
the standard library, and instructions the target writes for itself), which rows decode greedily and
which sample, and the sampling itself. Chunks already on disk are skipped, so the command resumes
where it stopped and the corpus can grow over several days and machines. A chunk stores token ids
only (uint16, compressed: about 2 bytes a token); the features and labels EAGLE-3 trains on are
recomputed from them by the float32 target (`training/eagle3_data.py`).

The text is the target's own: by default it generates in bfloat16, which on a CPU with AVX-512 BF16
is about 1.7x faster than float32 and picks the float32 model's greedy token about 98 % of the time
(chapter 06's bf16 stand-in); the labels are the float32 target's anyway.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..loop.generate import autoregressive_generate
from ..loop.sampling import Sampler
from ..prompts import as_chat, code_prompt, instruction_request, is_unseen, python_sources, template_prompt
from .corpus import continuation_rows, encode_left_padded

MANIFEST = "manifest.json"

# What each row of a chunk is; stored per row as a small integer.
KINDS = ("template", "template-chat", "code", "code-chat", "instruction-request", "instruction")


@dataclass(frozen=True)
class ChunkSpec:
    """How one chunk is drawn; every chunk of a corpus uses the same spec (it is in the manifest)."""

    requests: int = 64  # self-instruct: chat requests for a new prompt; each usable reply is then answered
    templates: int = 96
    code: int = 96
    chat_share: float = 0.5  # templates and code: share in the chat template
    greedy_share: float = 0.5
    temperature: float = 0.8  # sampled rows: pure temperature sampling, no top-k/top-p
    request_temperature: float = 0.7  # the requests always sample (a new prompt per chunk), a little cooler: T = 1 rambles
    max_new_tokens: int = 192
    request_tokens: int = 48  # enough for one question or task
    max_prompt_tokens: int = 320  # longer prompts are dropped, never cut (a cut chat prompt loses its turn marker)
    batch_size: int = 128


@dataclass
class Row:
    """One sequence: prompt then the target's continuation (up to and including its EOS)."""

    tokens: list[int]
    n_prompt: int
    kind: int
    greedy: bool


@dataclass
class ChunkStats:
    """What a chunk holds and how long it took."""

    chunk: int
    sequences: int
    tokens: int
    generated: int
    seconds: float
    kinds: dict[str, int] = field(default_factory=dict)
    made_on: str = ""  # device and dtype, e.g. "cpu bfloat16"


def _plan(rng: random.Random, spec: ChunkSpec, files: list[Path]) -> tuple[list[str], list[tuple[str, int]]]:
    """Chunk prompts from its seed: (self-instruct requests, [(prompt before any chat template, kind)])."""
    requests = [instruction_request(rng) for _ in range(spec.requests)]
    rows = []
    for _ in range(spec.templates):
        rows.append((template_prompt(rng), 1 if rng.random() < spec.chat_share else 0))
    for _ in range(spec.code):
        snippet = code_prompt(rng, files)
        if rng.random() < spec.chat_share / 2:  # half as often: code is mostly continued as code
            rows.append((f"Explain what this code does:\n{snippet}", 3))
        else:
            rows.append((snippet, 2))
    return requests, [(text, kind) for text, kind in rows if is_unseen(text)]


def _usable_instruction(text: str, seen: set[str]) -> str | None:
    """The target's reply to a request, cleaned, if it can serve as a new prompt (one line-ish, not a repeat)."""
    text = text.strip().strip('"').strip()
    key = " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())
    if not 15 <= len(text) <= 400 or "<|" in text or key in seen or not is_unseen(text):
        return None
    seen.add(key)
    return text


def _decode_rows(
    target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], *, greedy: bool, temperature: float,
    max_new_tokens: int, spec: ChunkSpec, generator: torch.Generator,
) -> list[tuple[list[int], int]]:
    """(prompt + continuation ids, prompt length) for each text, in batches of similar length; finished rows leave early."""
    lengths = [len(ids) for ids in tokenizer(texts).input_ids]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: list[tuple[list[int], int] | None] = [None] * len(texts)
    sampler = Sampler(0.0 if greedy else temperature, generator=None if greedy else generator)
    eos = tokenizer.eos_token_id
    for start in range(0, len(order), spec.batch_size):
        rows = order[start : start + spec.batch_size]
        enc = encode_left_padded(tokenizer, [texts[i] for i in rows], spec.max_prompt_tokens, target.device)
        sequences = autoregressive_generate(target, enc["input_ids"], attention_mask=enc["attention_mask"],
                                            max_new_tokens=max_new_tokens, sampler=sampler, eos_token_id=eos,
                                            pad_token_id=tokenizer.pad_token_id)
        for i, (tokens, n_prompt) in zip(rows, continuation_rows(enc, sequences, eos)):
            out[i] = (tokens.tolist(), n_prompt)
    return out  # type: ignore[return-value]


def _decode_split(
    target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], greedy: list[bool], *,
    max_new_tokens: int, temperature: float, spec: ChunkSpec, generator: torch.Generator,
) -> list[tuple[list[int], int]]:
    """Decode the greedy rows and the sampled rows (two batches of batches), back in the order given."""
    out: list[tuple[list[int], int] | None] = [None] * len(texts)
    for mode in (True, False):
        picked = [i for i, g in enumerate(greedy) if g == mode]
        if picked:
            decoded = _decode_rows(target, tokenizer, [texts[i] for i in picked], greedy=mode, temperature=temperature,
                                   max_new_tokens=max_new_tokens, spec=spec, generator=generator)
            for i, row in zip(picked, decoded):
                out[i] = row
    return out  # type: ignore[return-value]


def _fits(tokenizer: PreTrainedTokenizerBase, text: str, spec: ChunkSpec) -> bool:
    """Whether a prompt is short enough to keep whole."""
    return len(tokenizer(text).input_ids) <= spec.max_prompt_tokens


@torch.inference_mode()
def build_chunk(
    target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, chunk: int, spec: ChunkSpec = ChunkSpec(),
    files: list[Path] | None = None,
) -> list[Row]:
    """Every row of chunk `chunk`: self-instruct requests, their answers, templates and code; all from seed `chunk`."""
    rng = random.Random(chunk)
    generator = torch.Generator(device=target.device).manual_seed(chunk)
    requests, planned = _plan(rng, spec, python_sources() if files is None else files)
    # 1. The target writes new prompts: each request sampled in the chat template (kept as training rows too).
    request_texts = [as_chat(tokenizer, r) for r in requests]
    replies = _decode_split(target, tokenizer, request_texts, [False] * len(requests), max_new_tokens=spec.request_tokens,
                            temperature=spec.request_temperature, spec=spec, generator=generator)
    rows = [Row(tokens, n, KINDS.index("instruction-request"), False) for tokens, n in replies]
    seen: set[str] = set()
    for tokens, n in replies:
        instruction = _usable_instruction(tokenizer.decode(tokens[n:], skip_special_tokens=True), seen)
        if instruction is not None:
            planned.append((instruction, KINDS.index("instruction")))
    # 2. The target answers or continues every prompt, greedy or sampled as the seed says.
    chat = {KINDS.index(k) for k in ("template-chat", "code-chat", "instruction")}
    texts = [as_chat(tokenizer, text) if kind in chat else text for text, kind in planned]
    keep = [i for i, text in enumerate(texts) if _fits(tokenizer, text, spec)]
    texts, kinds = [texts[i] for i in keep], [planned[i][1] for i in keep]
    greedy = [rng.random() < spec.greedy_share for _ in texts]
    decoded = _decode_split(target, tokenizer, texts, greedy, max_new_tokens=spec.max_new_tokens,
                            temperature=spec.temperature, spec=spec, generator=generator)
    rows += [Row(tokens, n, kind, g) for (tokens, n), kind, g in zip(decoded, kinds, greedy)]
    return rows


def chunk_path(folder: str | Path, chunk: int) -> Path:
    """Where chunk `chunk` is stored."""
    return Path(folder) / f"chunk_{chunk:05d}.npz"


def save_chunk(rows: list[Row], path: str | Path) -> None:
    """Token ids only, as uint16 (the vocabulary has fewer than 65,536 ids), compressed, with each row's layout."""
    tokens = np.concatenate([np.asarray(r.tokens, dtype=np.int64) for r in rows])
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("token ids must fit in 16 bits to be stored in a chunk")
    path = Path(path)
    partial = path.with_name(path.stem + ".part.npz")  # renamed when complete: readers never see half a chunk
    np.savez_compressed(
        partial, tokens=tokens.astype(np.uint16), lengths=np.array([len(r.tokens) for r in rows], dtype=np.int32),
        n_prompt=np.array([r.n_prompt for r in rows], dtype=np.int32), kind=np.array([r.kind for r in rows], dtype=np.uint8),
        greedy=np.array([r.greedy for r in rows], dtype=bool),
    )
    partial.rename(path)


def load_chunk(path: str | Path) -> list[Row]:
    """The rows of a stored chunk."""
    with np.load(path) as z:
        ends = np.cumsum(z["lengths"])
        starts = ends - z["lengths"]
        return [Row(z["tokens"][s:e].astype(np.int64).tolist(), int(n), int(k), bool(g))
                for s, e, n, k, g in zip(starts, ends, z["n_prompt"], z["kind"], z["greedy"])]


def chunk_stats(chunk: int, rows: list[Row], seconds: float) -> ChunkStats:
    """Counts of a chunk's rows and tokens, by kind."""
    kinds = {name: sum(r.kind == i for r in rows) for i, name in enumerate(KINDS)}
    return ChunkStats(chunk, len(rows), sum(len(r.tokens) for r in rows), sum(len(r.tokens) - r.n_prompt for r in rows),
                      round(seconds, 1), kinds)


def read_manifest(folder: str | Path) -> dict:
    """The corpus folder's manifest (how it was made, and one entry per chunk), or an empty one."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"chunks": []}


def _write_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest, chunks in order."""
    manifest["chunks"] = sorted(manifest["chunks"], key=lambda c: c["chunk"])
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def build_corpus(
    target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path, chunks: range, *,
    spec: ChunkSpec = ChunkSpec(), minutes: float | None = None, about: dict | None = None, progress: bool = True,
) -> list[ChunkStats]:
    """Build every chunk in `chunks` not yet on disk, writing each (and the manifest) as soon as it is done.

    Stops after the chunk during which `minutes` ran out; a later call resumes with the next missing one.
    A folder made with another ChunkSpec is refused: its chunks would not be the same corpus.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    if manifest.get("spec", asdict(spec)) != asdict(spec):
        raise ValueError(f"{folder} was built with another chunk spec ({manifest['spec']}); use a new folder")
    manifest["spec"] = asdict(spec)
    manifest.setdefault("made_with", about or {})
    todo = [c for c in chunks if not chunk_path(folder, c).exists()]
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    done: list[ChunkStats] = []
    bar = tqdm(todo, desc="corpus chunks", unit="chunk", disable=not progress)
    files = python_sources()
    for c in bar:
        start = time.perf_counter()
        rows = build_chunk(target, tokenizer, c, spec, files)
        save_chunk(rows, chunk_path(folder, c))
        stats = chunk_stats(c, rows, time.perf_counter() - start)
        stats.made_on = f"{target.device.type} {str(target.dtype).removeprefix('torch.')}"
        manifest["chunks"] = [e for e in manifest["chunks"] if e["chunk"] != c] + [asdict(stats)]
        _write_manifest(folder, manifest)
        done.append(stats)
        total = sum(e["generated"] for e in manifest["chunks"])
        bar.set_postfix(generated=f"{total:,}", tok_s=f"{stats.generated / stats.seconds:.0f}")
        if deadline is not None and time.monotonic() > deadline:
            break
    return done


def corpus_chunks(folder: str | Path) -> list[int]:
    """The numbers of the complete chunks in a corpus folder, in order."""
    return sorted(int(p.name[6:11]) for p in Path(folder).glob("chunk_*.npz") if ".part" not in p.name)


def corpus_rows(folder: str | Path, chunks: int | None = None) -> Iterator[tuple[int, Row]]:
    """(chunk, row) for every row of the first `chunks` chunks present (all by default), in chunk order."""
    present = corpus_chunks(folder)
    for c in present[:chunks]:
        for row in load_chunk(chunk_path(folder, c)):
            yield c, row
