"""Loading model pairs, and the CPU kernels that make verification cheap.

- pairs: load_pair (the offline SmolLM2 default, the seed's gpt2 pair, or any two models), pick_device
- cpu_kernels: verify K+1 tokens at the cost of about one call on a CPU (chapter 05); opt out with cpu_kernels=False
"""

from .pairs import (
    DEFAULT_PRESET,
    DEVICE_ENV,
    EAGLE_DRAFT,
    PRESETS,
    PROMPT_LOOKUP,
    STAND_INS,
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
