"""specdec_lib: the tested code behind the speculative decoding notebooks, in rooms named after what they hold.

Bottom to top (a room imports only rooms below it; tests/test_layering.py checks it):
- loop: one speculative step (`speculative_step`) and the loop over it, the acceptance rules, the
  Drafter protocol, KV caches behind one interface, token trees (09), static caches and compiled steps (10),
  left-padded batches with ragged acceptance (11)
- drafters: whatever proposes tokens, one kind per file, and the registry of drafts by name
- models: load_pair and the presets, the draft networks (RestrictedVocabLlama, EagleHead), cpu_kernels
- prompts: the prompt sets (varied, grounded, held-out, training)
- bench: c and verification costs, the speedup theory, benchmark runs and reports (chapters 04-05), batch sweeps (11)
- training: the distillation corpus, draft and EAGLE training, evaluation (chapters 06, 08)
- viz: widgets and plots
- testing: fixtures for the tests (tiny random models, a toy tokenizer)
- serving: the target and drafts exported to vLLM, runs and the server in vLLM's own venv (12)
- cli: `python -m specdec_lib.bench` and `python -m specdec_lib.training`
"""

import importlib

# The package's front door is lazy: `from specdec_lib import load_pair` imports the rooms a name lives
# in only when it is asked for. `python -m specdec_lib.serving run` needs this: it runs inside vLLM's
# own venv, whose older transformers can't import the loop, and touches only prompts and serving.
_HOME = {
    **dict.fromkeys(
        ("CacheSpec", "DynamicTree", "ModelRunner", "Sampler", "SpecOutput", "SpecStats", "StepRecord",
         "autoregressive_generate", "crop_cache", "greedy_verify", "logits_to_probs", "pool_steps",
         "rejection_verify", "sample", "speculative_generate", "speculative_step"), "loop"),
    **dict.fromkeys(("Drafter", "DrafterBase", "ModelDrafter", "Proposal", "register_draft"), "drafters"),
    **dict.fromkeys(("ModelPair", "ModelUnavailableError", "load_pair", "pick_device"), "models"),
}


def __getattr__(name: str):
    """Import a public name's room on first use (PEP 562)."""
    if name not in _HOME:
        raise AttributeError(f"module 'specdec_lib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public names with the module's own, for tab completion."""
    return sorted(set(globals()) | set(_HOME))


__all__ = [
    "CacheSpec",
    "DynamicTree",
    "Drafter",
    "DrafterBase",
    "ModelDrafter",
    "ModelPair",
    "ModelRunner",
    "ModelUnavailableError",
    "Proposal",
    "Sampler",
    "SpecOutput",
    "SpecStats",
    "StepRecord",
    "autoregressive_generate",
    "crop_cache",
    "greedy_verify",
    "load_pair",
    "logits_to_probs",
    "pick_device",
    "pool_steps",
    "register_draft",
    "rejection_verify",
    "sample",
    "speculative_generate",
    "speculative_step",
]
