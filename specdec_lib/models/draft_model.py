"""Chapter 06: a small Llama-style draft that shares the target's tokenizer but scores only part of its vocabulary."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

ASSETS = Path(__file__).parent.parent / "assets"
SMOLLM2_DRAFT_DIR = ASSETS / "smollm2_draft"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Not shipped: the draft reuses the target's input embeddings, frozen during training, at load time.
SHARED_KEYS = ("model.embed_tokens.weight",)


class RestrictedVocabLlama(LlamaForCausalLM):
    """A Llama whose head scores `config.draft_vocab_size` of the tokenizer's ids; all other ids get -inf.

    Its logits keep the full vocabulary width, so it drops into any loop (and HF's `generate`) that
    expects a normal causal LM. q(x) = 0 outside the scored ids; rejection sampling stays exact because
    the residual max(0, p - q) then carries all of the target's mass on those ids.
    """

    _tied_weights_keys = {}

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        # Only `draft_vocab_size` rows: the head is what makes a full-vocabulary draft expensive.
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.register_buffer("vocab_ids", torch.arange(config.draft_vocab_size), persistent=True)

    def sub_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft's own vocabulary, (..., draft_vocab_size); what training optimises."""
        return self.lm_head(hidden)

    def full_logits(self, sub: torch.Tensor) -> torch.Tensor:
        """Sub-vocabulary logits (..., V_draft) scattered to the full vocabulary; -inf elsewhere, so q = 0 there."""
        logits = sub.new_full((*sub.shape[:-1], self.config.vocab_size), float("-inf"))
        return logits.scatter_(-1, self.vocab_ids.expand(*sub.shape[:-1], -1), sub)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Like LlamaForCausalLM.forward, with logits scattered back to the full vocabulary."""
        if labels is not None:
            raise ValueError("RestrictedVocabLlama has no built-in loss; train it with specdec_lib.training.train_draft")
        if cache is None and "past_key_values" in kwargs:  # generate() still passes the old name
            cache = kwargs.pop("past_key_values")
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
        )
        logits = self.full_logits(self.sub_logits(slice_logits_to_keep(out.last_hidden_state, logits_to_keep)))
        return CausalLMOutputWithPast(logits=logits, cache=out.cache)


def draft_config(target_config: LlamaConfig, n_layers: int, draft_vocab_size: int) -> LlamaConfig:
    """The target's config with fewer layers, an untied head and a restricted output vocabulary."""
    config = copy.deepcopy(target_config)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:n_layers]
    config.tie_word_embeddings = False
    config.draft_vocab_size = draft_vocab_size
    config.architectures = ["RestrictedVocabLlama"]
    return config


def draft_from_target(target: PreTrainedModel, layers: list[int], vocab_ids: torch.Tensor) -> RestrictedVocabLlama:
    """A draft initialised from the target: its embeddings, the chosen decoder layers, its norm and head rows."""
    config = draft_config(target.config, len(layers), len(vocab_ids))
    draft = RestrictedVocabLlama(config).to(target.device)
    with torch.no_grad():
        draft.model.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
        for mine, theirs in zip(draft.model.layers, layers):
            mine.load_state_dict(target.model.layers[theirs].state_dict())
        draft.model.norm.load_state_dict(target.model.norm.state_dict())
        draft.lm_head.weight.copy_(target.lm_head.weight[vocab_ids])
        draft.vocab_ids.copy_(vocab_ids)
    return draft.eval()


def save_draft(draft: RestrictedVocabLlama, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the draft's own weights (not the shared embeddings) as safetensors, plus its config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in draft.state_dict().items() if k not in SHARED_KEYS}
    save_file(state, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(draft.config.to_dict(), indent=2, sort_keys=True) + "\n")
    return folder


def load_draft(
    target: PreTrainedModel, folder: str | Path = SMOLLM2_DRAFT_DIR, cls: type[RestrictedVocabLlama] = RestrictedVocabLlama
) -> RestrictedVocabLlama:
    """Load a saved draft (of class `cls`) onto the target's device and dtype, taking the input embeddings from the target."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no trained draft in {folder}: expected {WEIGHTS_FILE} and {CONFIG_FILE} there")
    config = LlamaConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    saved_as = (config.architectures or [cls.__name__])[0]
    if saved_as != cls.__name__:
        raise ValueError(f"{folder} holds a {saved_as}, not a {cls.__name__}")
    if config.vocab_size != target.config.vocab_size or config.hidden_size != target.config.hidden_size:
        raise ValueError(f"the draft in {folder} was trained for another target "
                         f"(vocab {config.vocab_size}, width {config.hidden_size})")
    with torch.device("meta"):  # skip random init of weights we overwrite anyway
        draft = cls(config)
    state = load_file(folder / WEIGHTS_FILE)
    state[SHARED_KEYS[0]] = target.model.embed_tokens.weight.detach()
    draft.load_state_dict(state, assign=True)
    draft.model.rotary_emb = type(draft.model.rotary_emb)(config)  # its buffers are computed, not stored
    return draft.to(device=target.device, dtype=target.dtype).eval()


def draft_summary(draft: RestrictedVocabLlama) -> str:
    """A short description: layers, width and vocabulary of a restricted-vocabulary draft."""
    c = draft.config
    layers = f"{c.num_hidden_layers} layer{'s' if c.num_hidden_layers != 1 else ''}"
    return f"{layers}, {c.hidden_size} wide, {c.draft_vocab_size} of {c.vocab_size} token ids"
