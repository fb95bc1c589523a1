"""The loop and its rules: what chapters 01-04 build. This room imports no other room of the library.

- greedy: greedy_verify, the greedy acceptance rule (chapter 01)
- step: speculative_step, one round (propose, verify in one target call, accept, commit), StepRecord, the rules
- generate: speculative_generate, a short loop over that step, and the autoregressive baseline it must match (chapter 02)
- drafter: the Drafter protocol the step talks to (Proposal, Verified, DrafterBase, as_drafter)
- sampling: the Sampler, logits_to_probs and rejection_verify, lossless sampling (chapter 03)
- sampling_check: a toy step, planted bugs and chi-square tests that tell them apart (chapter 03)
- kv_cache: ModelRunner and one cache interface (DynamicKV, StaticKV: rollback, keep), chapter 04 and 10
- tree: token trees, their 4D masks, greedy paths and lossless sampling on them (chapter 09)
- tree_growth: how a drafter fills a tree: a fixed shape, or a dynamic tree grown where it is confident (EAGLE-2)
- batch: many requests at once: left-padded rows, a cache with one length per row, the batched step (chapter 11)
- timer: the library's one timer, synchronised on CUDA
"""

from .greedy import greedy_verify, greedy_verify_tensors
from .sampling import Sampler, logits_to_probs, rejection_verify, sample
from .kv_cache import CacheSpec, DynamicKV, ModelRunner, StaticKV, crop_cache
from .drafter import Drafter, DrafterBase, Proposal, TreeDrafter, Verified, as_drafter, register_adapter
from .step import GREEDY, REJECTION, StepRecord, speculative_step
from .tree_growth import DynamicTree
from .batch import BatchKV, BatchRunner, Rows, batch_step
from .generate import SpecOutput, SpecStats, autoregressive_generate, pool_steps, speculative_generate
