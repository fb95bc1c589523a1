"""specdec_lib: the tested code behind the speculative decoding notebooks.

One module per chapter concept:
- greedy: greedy_verify (chapter 01)
- generate: speculative_generate, autoregressive_generate (chapter 02)
- sampling: logits_to_probs, rejection_verify (chapter 03)
- kv_cache: ModelRunner, crop_cache (chapter 04)
- theory, bench: the speedup formula and the benchmark (chapters 04-05)
- cpu_linear: verification over K+1 positions at the cost of about one call on CPUs (chapter 05)
- seed_pair: the seed pair's sizes with random weights, timed under an imposed acceptance rate (chapter 05)
- prompts, distill_data, draft_model, train_draft: training a draft by self-distillation (chapter 06)
- models: load_pair and the model presets; testing: tiny random pairs
"""

from .generate import SpecOutput, SpecStats, StepRecord, autoregressive_generate, speculative_generate
from .greedy import greedy_verify
from .kv_cache import ModelRunner, crop_cache
from .models import ModelPair, ModelUnavailableError, load_pair, pick_device
from .sampling import logits_to_probs, rejection_verify, sample

__all__ = [
    "ModelPair",
    "ModelRunner",
    "ModelUnavailableError",
    "SpecOutput",
    "SpecStats",
    "StepRecord",
    "autoregressive_generate",
    "crop_cache",
    "greedy_verify",
    "load_pair",
    "logits_to_probs",
    "pick_device",
    "rejection_verify",
    "sample",
    "speculative_generate",
]
