"""What both sides of serving agree on, in plain Python: where the exports live, the methods, the prompt file."""

from __future__ import annotations

import os
from pathlib import Path

from ..prompts import load_prompts

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / "build" / "vllm"  # target/, draft/, eagle/: what `make vllm` exports
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# The course's names for vLLM's speculative methods; "none" is vLLM without speculation.
METHODS = ("none", "ngram", "draft", "eagle")
VLLM_METHOD = {"ngram": "ngram", "draft": "draft_model", "eagle": "eagle3"}
EXPORTS = {"target": "target", "draft": "draft", "eagle": "eagle"}  # folder names under BUILD_DIR


# vLLM's spec-decode counters, as `LLM.get_metrics()` names them (/metrics adds Prometheus' _total suffix).
SPEC_COUNTERS = {
    "drafts": "vllm:spec_decode_num_drafts",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens",
    "accepted": "vllm:spec_decode_num_accepted_tokens",
}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"  # one count per draft position

# Set for every vLLM process the course starts: no usage report sent home (CI and the GPU machines are offline),
# and a KV cache sized for a 135M model instead of vLLM's CPU default of several GiB.
VLLM_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def missing_exports(build_dir: Path = BUILD_DIR, which: tuple[str, ...] = tuple(EXPORTS)) -> list[str]:
    """The exports among `which` (target, draft, eagle) not yet written into build_dir."""
    return [name for name in which if not (Path(build_dir) / EXPORTS[name] / "config.json").is_file()]


def vllm_available(python: Path = VLLM_PYTHON) -> bool:
    """Whether `make vllm` has made vLLM's venv and exported the models it serves."""
    return python.is_file() and not missing_exports()


def speculative_config(method: str, k: int, build_dir: Path = BUILD_DIR, ngram: tuple[int, int] = (1, 4)) -> dict | None:
    """vLLM's `speculative_config` for one of the course's methods with K draft tokens (None: no speculation)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "none":
        return None
    if k < 1:
        raise ValueError(f"K (num_speculative_tokens) must be at least 1, got {k}")
    config: dict = {"method": VLLM_METHOD[method], "num_speculative_tokens": k}
    if method == "ngram":  # chapter 07's prompt lookup: match the last 1..4 tokens in the prompt and output so far
        config.update(prompt_lookup_min=ngram[0], prompt_lookup_max=ngram[1])
    else:
        config["model"] = str(Path(build_dir) / EXPORTS[method])
    return config


def write_prompt_file(prompts: list[str], path: str | Path) -> Path:
    """One prompt a line, newlines written as a backslash and n (what `read_prompt_file` reads back)."""
    if any("\\n" in p for p in prompts):
        raise ValueError("a prompt holds a literal backslash-n, which the one-line format can't keep apart from a newline")
    path = Path(path)
    path.write_text("".join(p.replace("\n", "\\n") + "\n" for p in prompts))
    return path


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a prompt file (one a line, `\\n` for newlines), as chapter 05's bench reads them."""
    return load_prompts(os.fspath(path))
