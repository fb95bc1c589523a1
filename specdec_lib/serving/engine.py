"""One vLLM run of the course's prompts with one speculative method (run in `.venv-vllm`; vLLM is imported here only).

The prompts go in as token ids (`tokenizer(prompt).input_ids`, as the course tokenises them), greedy
and without stopping at end-of-text, so every run generates the same number of tokens and the course's
loop can be compared with it token for token. Acceptance comes from vLLM's own spec-decode counters.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .layout import BUILD_DIR, EXPORTS, PER_POSITION, SPEC_COUNTERS, VLLM_ENV, speculative_config


def spec_counters(metrics: list) -> dict:
    """vLLM's spec-decode counters (`LLM.get_metrics()`) as {'drafts', 'draft_tokens', 'accepted', 'per_position'}."""
    by_name = {m.name: m for m in metrics}
    out = {key: int(by_name[name].value) if name in by_name else 0 for key, name in SPEC_COUNTERS.items()}
    out["per_position"] = [int(v) for v in by_name[PER_POSITION].values] if PER_POSITION in by_name else []
    return out


def counters_since(after: dict, before: dict) -> dict:
    """The counters' growth between two readings (so a warm-up run is left out)."""
    grown = {key: after[key] - before[key] for key in SPEC_COUNTERS}
    width = max(len(after["per_position"]), len(before["per_position"]))
    pad = lambda values: list(values) + [0] * (width - len(values))  # noqa: E731
    grown["per_position"] = [a - b for a, b in zip(pad(after["per_position"]), pad(before["per_position"]))]
    return grown


def acceptance_summary(counters: dict) -> dict:
    """Counters plus α (accepted / drafted tokens) and the acceptance rate at each draft position (accepted / drafts)."""
    drafts = counters["drafts"]
    return {**counters,
            "alpha": counters["accepted"] / counters["draft_tokens"] if counters["draft_tokens"] else None,
            "rate_per_position": [n / drafts for n in counters["per_position"]] if drafts else []}


def make_llm(method: str, k: int, batch: int, max_model_len: int, dtype: str = "float32",
             build_dir: Path = BUILD_DIR, seed: int = 0, eager: bool = False, ngram: tuple[int, int] = (1, 4)):
    """A vLLM engine on the exported target with method's speculative config, at most `batch` sequences at once.

    eager skips vLLM's torch.compile warm-up (about a minute on a 2-core CPU): right for short runs and tests."""
    for name, value in VLLM_ENV.items():  # before vLLM is imported: it reads them then
        os.environ.setdefault(name, value)
    from vllm import LLM

    target = str(Path(build_dir) / EXPORTS["target"])
    return LLM(model=target, tokenizer=target, dtype=dtype, seed=seed, max_num_seqs=batch,
               max_model_len=max_model_len, speculative_config=speculative_config(method, k, build_dir, ngram),
               generation_config="vllm",  # vLLM's own defaults, not the export's generation_config.json
               disable_log_stats=False, enable_prefix_caching=False, enforce_eager=eager)


def generate(llm, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuations of token-id prompts, max_tokens each (end-of-text does not stop them)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]


def run(method: str, k: int, prompts: list[str], batch: int, max_tokens: int, dtype: str = "float32",
        build_dir: Path = BUILD_DIR, warmup: bool = True, eager: bool = False, ngram: tuple[int, int] = (1, 4)) -> dict:
    """Generate every prompt with vLLM at most `batch` at a time; token ids, tokens/s and acceptance (warm-up excluded)."""
    from transformers import AutoTokenizer

    if batch < 1 or max_tokens < 1:
        raise ValueError(f"batch and max tokens must be at least 1, got {batch} and {max_tokens}")
    tokenizer = AutoTokenizer.from_pretrained(Path(build_dir) / EXPORTS["target"])
    prompt_ids = [tokenizer(p).input_ids for p in prompts]
    max_model_len = max(map(len, prompt_ids)) + max_tokens + k + 8  # room for the drafts past the last token
    started = time.perf_counter()
    llm = make_llm(method, k, batch, max_model_len, dtype, build_dir, eager=eager, ngram=ngram)
    load_s = time.perf_counter() - started
    if warmup:  # first calls compile and allocate; its tokens don't count
        generate(llm, prompt_ids[:batch], min(max_tokens, 8))
    before = spec_counters(llm.get_metrics())
    started = time.perf_counter()
    token_ids = generate(llm, prompt_ids, max_tokens)
    seconds = time.perf_counter() - started
    counters = counters_since(spec_counters(llm.get_metrics()), before)
    return {
        "method": method, "k": k if method != "none" else 0, "batch": batch, "max_tokens": max_tokens, "dtype": dtype, "eager": eager,
        "speculative_config": speculative_config(method, k, build_dir, ngram), "prompts": prompts,
        "token_ids": token_ids, "seconds": seconds, "load_seconds": load_s,
        "tokens_per_s": sum(map(len, token_ids)) / seconds,
        "acceptance": acceptance_summary(counters), "vllm_version": _vllm_version(),
    }


def _vllm_version() -> str:
    """The installed vLLM's version."""
    import vllm

    return vllm.__version__
