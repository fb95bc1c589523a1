"""Models: loading pairs, the draft networks the course trains, and the CPU kernels that make verification cheap.

- pairs: load_pair (the offline SmolLM2 default, the seed's gpt2 pair, or any two models), pick_device;
  registers the drafts shipped for SmolLM2 by name (trained, eagle, eagle1, the stand-ins)
- draft_model: RestrictedVocabLlama, a small draft scoring part of the vocabulary; save/load (chapter 06)
- eagle_head: EagleHead, the EAGLE head reading the target's top features (chapter 08, `eagle1`)
- eagle3_head: Eagle3Head, the EAGLE-3 head fusing three target layers, in vLLM's eagle3 layout (chapter 08, `eagle3`)
- gguf_cache: the GGUF target de-quantized once and kept as a plain folder ($SPECDEC_CACHE; off to opt out)
- cpu_kernels: verify K+1 tokens at the cost of about one call on a CPU (chapter 05); opt out with cpu_kernels=False
"""

from ..drafters import PROMPT_LOOKUP
from .pairs import (
    DEFAULT_PRESET,
    DEVICE_ENV,
    EAGLE_DRAFT,
    EAGLE1_DRAFT,
    EAGLE3_DRAFT,
    BEST_EAGLE,
    PRESETS,
    STAND_INS,
    TRAINED_DRAFT,
    ModelPair,
    ModelUnavailableError,
    available_devices,
    load_pair,
    load_smollm2,
    pick_device,
    smollm2_draft,
    smollm2_gguf_path,
    stand_in_draft,
)
from .eagle3_head import SMOLLM2_EAGLE3_DIR, Eagle3Head, eagle3_from_target, load_eagle3
from .eagle_head import SMOLLM2_EAGLE_DIR, EagleHead, eagle_from_draft, load_eagle
