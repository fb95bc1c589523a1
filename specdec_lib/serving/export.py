"""The course's target, trained draft and EAGLE-3 head written in layouts vLLM loads (run in the course's venv).

- target: the GGUF target as transformers de-quantizes it (float32), saved as a plain Llama folder;
- draft: chapter 06's RestrictedVocabLlama as a plain `LlamaForCausalLM` (`draft_model` in vLLM), its
  input embeddings taken from the target and its head widened to the full vocabulary;
- eagle: chapter 08's EAGLE-3 head in vLLM's `eagle3` checkpoint layout (`vllm_eagle3_layout`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..models.draft_model import SMOLLM2_DRAFT_DIR, RestrictedVocabLlama, load_draft
from ..models.eagle3_head import SMOLLM2_EAGLE3_DIR, load_eagle3, vllm_eagle3_layout
from ..models.gguf_cache import save_plain
from .layout import BUILD_DIR, EXPORTS, missing_exports


def export_target(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Save the target and its tokenizer as a plain transformers folder (no GGUF quantizer), for vLLM to load."""
    return save_plain(target, tokenizer, folder)


def plain_draft(draft: RestrictedVocabLlama) -> LlamaForCausalLM:
    """The restricted-vocabulary draft as a plain LlamaForCausalLM: its head's rows at their token ids, zeros elsewhere.

    vLLM's `draft_model` needs a full-vocabulary causal LM. Ids outside the draft's vocabulary get logit 0
    instead of -inf, so the greedy proposal is the same wherever the draft's best logit is above 0
    (`proposals_kept` measures where it is). Under sampling the two q's differ; vLLM stays lossless either way.
    """
    # The draft's config is the target's cut down: drop its restricted vocabulary and the GGUF quantizer it inherited.
    dropped = ("draft_vocab_size", "quantization_config")
    config = LlamaConfig.from_dict({k: v for k, v in draft.config.to_dict().items() if k not in dropped})
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    state = {k: v for k, v in draft.state_dict().items() if k not in ("vocab_ids", "lm_head.weight")}
    head = draft.lm_head.weight.new_zeros(config.vocab_size, config.hidden_size)
    state["lm_head.weight"] = head.index_copy(0, draft.vocab_ids, draft.lm_head.weight.detach())
    plain.load_state_dict(state, assign=True, strict=False)
    plain.model.rotary_emb = type(plain.model.rotary_emb)(config)  # computed buffers, not stored
    return plain.to(draft.device).eval()


@torch.no_grad()
def proposals_kept(draft: RestrictedVocabLlama, plain: LlamaForCausalLM, input_ids: torch.Tensor) -> dict:
    """Greedy next-token choices of the draft and its plain copy at every position of input_ids (B, L), compared."""
    restricted = draft(input_ids).logits
    widened = plain(input_ids).logits
    best = restricted.max(-1).values
    return {"positions": best.numel(), "same": int((restricted.argmax(-1) == widened.argmax(-1)).sum()),
            "lowest_best_logit": float(best.min())}


def export_draft(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path,
                 draft_dir: str | Path = SMOLLM2_DRAFT_DIR) -> Path:
    """Save chapter 06's trained draft as a plain Llama folder (with the target's tokenizer) for `draft_model`."""
    folder = Path(folder)
    plain_draft(load_draft(target, draft_dir)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export_eagle(target: PreTrainedModel, folder: str | Path, head_dir: str | Path = SMOLLM2_EAGLE3_DIR) -> Path:
    """Save chapter 08's EAGLE-3 head in vLLM's eagle3 layout: model.safetensors and config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, config = vllm_eagle3_layout(load_eagle3(target, head_dir))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def export_all(build_dir: str | Path = BUILD_DIR, which: tuple[str, ...] = tuple(EXPORTS), force: bool = False) -> list[Path]:
    """Export what `which` names into build_dir (skipping folders already there unless force), one line per step."""
    from ..models.pairs import load_smollm2  # the GGUF target, float32 on the CPU as vLLM will run it

    build_dir = Path(build_dir)
    todo = list(which) if force else missing_exports(build_dir, which)
    for name in sorted(set(which) - set(todo)):
        print(f"[export] {name}: already in {build_dir / EXPORTS[name]} (--force to redo)", flush=True)
    if not todo:
        return [build_dir / EXPORTS[name] for name in which]
    target, tokenizer = load_smollm2(torch.device("cpu"), torch.float32)
    writers = {"target": lambda f: export_target(target, tokenizer, f),
               "draft": lambda f: export_draft(target, tokenizer, f),
               "eagle": lambda f: export_eagle(target, f)}
    for name in todo:
        folder = build_dir / EXPORTS[name]
        partial = folder.with_name(folder.name + ".partial")  # a crash leaves no folder that looks finished
        writers[name](partial)
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        print(f"[export] {name}: wrote {folder} ({size:.0f} MiB)", flush=True)
    return [build_dir / EXPORTS[name] for name in which]
