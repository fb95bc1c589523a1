"""The loop and its rules: what chapters 01-04 build.

- greedy: greedy_verify, the greedy acceptance rule (chapter 01)
- generate: speculative_generate and the autoregressive baseline it must match (chapter 02)
- sampling: the Sampler, logits_to_probs and rejection_verify, lossless sampling (chapter 03)
- sampling_check: a toy step, planted bugs and chi-square tests that tell them apart (chapter 03)
- kv_cache: ModelRunner and crop_cache, KV caches with rollback (chapter 04); CacheSpec, static caches and compiled calls (chapter 10)
"""

# Order matters: generate imports the drafters, which import kv_cache and sampling from here.
from .greedy import greedy_verify, greedy_verify_tensors
from .sampling import Sampler, logits_to_probs, rejection_verify, sample
from .kv_cache import CacheSpec, ModelRunner, crop_cache
from .generate import SpecOutput, SpecStats, StepRecord, autoregressive_generate, pool_steps, speculative_generate
