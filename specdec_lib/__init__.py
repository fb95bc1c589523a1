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
- cli: `python -m specdec_lib.bench` and `python -m specdec_lib.training`
"""

from .loop import (
    CacheSpec,
    DynamicTree,
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
    speculative_step,
)
from .drafters import Drafter, DrafterBase, ModelDrafter, Proposal, register_draft
from .models import ModelPair, ModelUnavailableError, load_pair, pick_device

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
