"""specdec_lib: the tested code behind the speculative decoding notebooks, in rooms named after what they hold.

- loop: the speculative loop and its rules: greedy, sampling, KV caches, generate (chapters 01-04),
  token trees (09), static caches and compiled steps (10)
- drafters: whatever proposes tokens: the Drafter protocol, ModelDrafter (one kind of draft per file)
- models: load_pair and the model presets; cpu_kernels for cheap verification on CPUs
- bench: timing, the speedup theory, benchmark runs and reports, `python -m specdec_lib.bench` (chapters 04-05)
- training: prompts, the distillation corpus, the draft model, `python -m specdec_lib.training` (chapter 06)
- viz: widgets and plots
- testing: fixtures for the tests (tiny random models, a toy tokenizer)
"""

# loop first: its generate module imports the drafters, which import the loop's sampling and caches.
from .loop import (
    CacheSpec,
    ModelRunner,
    Sampler,
    SpecOutput,
    SpecStats,
    StepRecord,
    autoregressive_generate,
    crop_cache,
    greedy_verify,
    logits_to_probs,
    pool_steps,
    rejection_verify,
    sample,
    speculative_generate,
)
from .drafters import Drafter, ModelDrafter
from .models import ModelPair, ModelUnavailableError, load_pair, pick_device

__all__ = [
    "CacheSpec",
    "Drafter",
    "ModelDrafter",
    "ModelPair",
    "ModelRunner",
    "ModelUnavailableError",
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
    "rejection_verify",
    "sample",
    "speculative_generate",
]
