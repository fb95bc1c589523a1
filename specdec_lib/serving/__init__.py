"""Serving: the course's target and drafts handed to vLLM, the engine the course ends on (chapter 12).

Two sides, two environments (vLLM pins a transformers release older than the course's):
- export (the course's venv): the embedded target, the trained draft and the EAGLE-3 head written into
  `build/vllm/` in layouts vLLM loads (`python -m specdec_lib.serving export`);
- engine, server (`.venv-vllm`, made by `make vllm`): one vLLM run per method, or vLLM's
  OpenAI-compatible server, reporting token ids, tokens/s and vLLM's own spec-decode counters
  (`.venv-vllm/bin/python -m specdec_lib.serving run|serve ...`);
- client (the course's venv): those two commands as subprocesses that return their JSON;
- course (the course's venv): the course's own loop on the same prompts, counted the way vLLM counts.
vLLM is imported only inside `engine` and `server`, and only when they run; `layout` is plain Python both sides share.
"""

from .layout import (
    BUILD_DIR,
    METHODS,
    VLLM_PYTHON,
    read_prompt_file,
    speculative_config,
    vllm_available,
    write_prompt_file,
)
