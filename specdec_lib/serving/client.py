"""Calling vLLM from the course's venv: each run is a `.venv-vllm` subprocess that writes JSON (no vLLM import here)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .layout import BUILD_DIR, ROOT, VLLM_PYTHON, write_prompt_file


def _call(args: list[str], out: Path, timeout_s: float, python: Path) -> dict:
    """Run `python -m specdec_lib.serving ARGS --out out` in vLLM's venv; its JSON, or an error with the log's tail."""
    command = [str(python), "-m", "specdec_lib.serving", *args, "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command)} failed with exit code {done.returncode}:\n{tail}")
    return json.loads(out.read_text())


def vllm_run(method: str, k: int, prompts: Sequence[str], batch: int, max_tokens: int, *, build_dir: Path = BUILD_DIR,
             timeout_s: float = 600.0, python: Path = VLLM_PYTHON, compile: bool = False) -> dict:
    """`serving run` in vLLM's venv on these prompts: token ids, tokens/s and vLLM's acceptance counters."""
    with tempfile.TemporaryDirectory(prefix="specdec-vllm-") as tmp:
        prompt_file = write_prompt_file(list(prompts), Path(tmp) / "prompts.txt")
        args = ["run", "--method", method, "--k", str(k), "--prompts", str(prompt_file), "--batch", str(batch),
                "--max-tokens", str(max_tokens), "--models", str(build_dir)] + (["--compile"] if compile else [])
        return _call(args, Path(tmp) / "run.json", timeout_s, python)


def vllm_serve(method: str, k: int, prompt: str, max_tokens: int, *, build_dir: Path = BUILD_DIR,
               timeout_s: float = 420.0, python: Path = VLLM_PYTHON) -> dict:
    """`serving serve` in vLLM's venv: the server's round trip (start, one completion, /metrics, stop)."""
    with tempfile.TemporaryDirectory(prefix="specdec-vllm-") as tmp:
        args = ["serve", "--method", method, "--k", str(k), "--prompt", prompt, "--max-tokens", str(max_tokens),
                "--models", str(build_dir)]
        return _call(args, Path(tmp) / "serve.json", timeout_s, python)
