"""Chapter 08's EAGLE head: a restricted-vocabulary Llama that reads the target's features (drafted by `drafters.eagle`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, PreTrainedModel

from ..drafters.eagle import EagleDrafter
from ..loop.drafter import register_adapter
from .draft_model import ASSETS, RestrictedVocabLlama, load_draft

SMOLLM2_EAGLE_DIR = ASSETS / "smollm2_eagle"


class EagleHead(RestrictedVocabLlama):
    """A restricted-vocabulary Llama whose input is fc([token embedding ; target feature]).

    `fc` starts as [I | 0], so an untrained head is exactly the token-only draft it was built from
    and the features can only add what training shows they are worth.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        d = config.hidden_size
        self.fc = nn.Linear(2 * d, d, bias=False)

    target_layers = (-1,)  # the target's top hidden state, after its final norm

    def fuse(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's top hidden state is the feature as it is."""
        return hidden

    def reset_fc(self) -> None:
        """fc = [I | 0]: pass the token embedding through, ignore the feature."""
        d = self.config.hidden_size
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, :d].copy_(torch.eye(d, dtype=self.fc.weight.dtype))

    def forward(self, input_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None, **kwargs):
        """Token-only use (no features: zeros in their place), so timing and generic tools can call it like any causal LM."""
        if inputs_embeds is None and input_ids is not None:
            emb = self.model.embed_tokens(input_ids)
            inputs_embeds = self.fc(torch.cat([emb, torch.zeros_like(emb)], dim=-1))
        return super().forward(inputs_embeds=inputs_embeds, **kwargs)

    def features_forward(
        self, features: torch.Tensor, tokens: torch.Tensor, cache=None, **inputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, n, d) at positions j and tokens (B, n) at j + 1 -> (predicted features at j + 1, sub-vocabulary logits).

        `inputs` (a batch's attention_mask and position_ids, chapter 11) go to the decoder as given.
        """
        x = self.fc(torch.cat([self.model.embed_tokens(tokens), features.to(self.dtype)], dim=-1))
        out = self.model(inputs_embeds=x, cache=cache, use_cache=cache is not None, **inputs)
        predicted = out.last_hidden_state  # after the final norm, like the target's feature
        return predicted, self.sub_logits(predicted)


def eagle_from_draft(draft: RestrictedVocabLlama) -> EagleHead:
    """An EAGLE head that starts as `draft` (its layers, norm and restricted head), with fc = [I | 0]."""
    config = draft.config.__class__.from_dict(draft.config.to_dict())
    config.architectures = [EagleHead.__name__]
    head = EagleHead(config).to(device=draft.device, dtype=draft.dtype)
    missing, unexpected = head.load_state_dict(draft.state_dict(), strict=False)
    assert set(missing) == {"fc.weight"} and not unexpected, (missing, unexpected)
    head.reset_fc()
    return head.eval()


def load_eagle(target: PreTrainedModel, folder: str | Path = SMOLLM2_EAGLE_DIR) -> EagleHead:
    """Load a saved EAGLE head onto the target's device and dtype (input embeddings come from the target)."""
    return load_draft(target, folder, cls=EagleHead)


# A bare EagleHead passed as the draft drafts in feature space (the most specific adapter wins over a plain model's).
register_adapter(EagleHead, EagleDrafter)
