"""Chapter 08: an EAGLE-3 head (Li et al. 2025; SafeAILab/EAGLE `eagle/traineagle3`), in the layout vLLM's `eagle3` loads.

What changes from chapter 08's EAGLE head (`eagle_head.py`):
- it reads three of the target's hidden states, low, middle and high (transformers' `hidden_states`
  indices 2, L // 2 and L - 3, vLLM's defaults), fused by one linear layer `fc` (3d -> d);
- one decoder layer whose attention reads [norm(token embedding) ; norm(hidden)] (2d wide) while its
  residual stream is the hidden alone; the hidden it hands to the next draft step is that stream
  before the final norm, and only the logits read it normed (as vLLM's `llama_eagle3.py` does);
- no feature loss: it is trained on tokens only, unrolled on its own hidden states (training-time
  test, `training/train_eagle3.py`), so it needs no feature to imitate, only the target's choices.

The drafter is chapter 08's `EagleDrafter`: it asks the loop for `target_layers` and fuses them
with `fuse` as they arrive, then drafts in the head's own space exactly as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import LlamaConfig, PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, apply_rotary_pos_emb, repeat_kv

from ..drafters.eagle import EagleDrafter
from ..loop.drafter import register_adapter
from .draft_model import ASSETS, RestrictedVocabLlama, draft_config, load_draft

SMOLLM2_EAGLE3_DIR = ASSETS / "smollm2_eagle3"


# The final norm starts at a tenth of the target's: with the target's own norm and head rows, a random
# layer's output gave confident, wrong logits (cross-entropy ~18 nats, twice log 8192) that training first
# had to undo. Measured on chunks 0-3, 50 steps: held-aside agreement 0.158 / 0.121 / 0.102 (drafts 1-3)
# against 0.139 / 0.070 / 0.062 with the full norm.
NORM_INIT_SCALE = 0.1


def default_target_layers(n_layers: int) -> tuple[int, int, int]:
    """Low, middle and high: the inputs of layers 2, L // 2 and L - 3, vLLM's default for EAGLE-3."""
    return (2, n_layers // 2, n_layers - 3)


class Eagle3Layer(LlamaDecoderLayer):
    """EAGLE-3's decoder layer: attention over [norm(embedding) ; norm(hidden)] (2d wide), the residual is the hidden.

    Its input is that concatenation, (..., 2d), so transformers' LlamaModel runs it like any layer:
    masks, positions, caches and 4D tree masks all work unchanged.
    """

    def __init__(self, config: LlamaConfig, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        attn, d = self.self_attn, config.hidden_size
        for name in ("q_proj", "k_proj", "v_proj"):  # 2d inputs: the token's embedding and the hidden, side by side
            setattr(attn, name, nn.Linear(2 * d, getattr(attn, name).out_features, bias=config.attention_bias))
        self.hidden_norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        """[embedding ; hidden] (B, n, 2d) -> the next hidden (B, n, d), before any final norm."""
        embeds, hidden = hidden_states.split(self.hidden_size, dim=-1)
        return self.block(embeds, hidden, lambda x: self.self_attn(hidden_states=x, **kwargs)[0])

    def block(self, embeds: torch.Tensor, hidden: torch.Tensor, attend: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The layer around its attention: norms, concatenation, residuals, MLP. `attend` maps the 2d-wide
        input to the attention's output: the cached attention when drafting, `_unrolled_attention` in training."""
        hidden = hidden + attend(torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1))
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Head(RestrictedVocabLlama):
    """An EAGLE-3 head: fc(three target layers) -> one `Eagle3Layer` -> norm -> rows of the target's head.

    `model.layers[0]` is the decoder layer and `model.norm` is the identity, so `model(...)` returns the
    pre-norm hidden that the next draft step reads; `sub_logits` applies `norm` before the head.
    """

    def __init__(self, config: LlamaConfig):
        if config.num_hidden_layers != 1:
            raise ValueError(f"an EAGLE-3 head has one decoder layer, the config asks for {config.num_hidden_layers}")
        super().__init__(config)
        self.model.layers = nn.ModuleList([Eagle3Layer(config, 0)])
        self.model.norm = nn.Identity()
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.fc = nn.Linear(len(config.target_layers) * config.target_hidden_size, config.hidden_size, bias=False)

    @property
    def target_layers(self) -> tuple[int, ...]:
        """The target's hidden states it reads (transformers' `hidden_states` indices)."""
        return tuple(self.config.target_layers)

    def fuse(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's chosen hidden states, concatenated (..., 3 d_target) -> the head's input feature (..., d)."""
        return self.fc(hidden.to(self.fc.weight.dtype))

    def sub_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary from a pre-norm hidden."""
        return self.lm_head(self.norm(hidden))

    def forward(self, input_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None, **kwargs):
        """Token-only use (a zero hidden in place of features), so timing and generic tools can call it like any causal LM."""
        if inputs_embeds is None and input_ids is not None:
            emb = self.model.embed_tokens(input_ids)
            inputs_embeds = torch.cat([emb, torch.zeros_like(emb)], dim=-1)
        return super().forward(inputs_embeds=inputs_embeds, **kwargs)

    def features_forward(
        self, features: torch.Tensor, tokens: torch.Tensor, cache=None, **inputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, n, d) at positions j (fused target states, or this head's own hiddens) and tokens (B, n)
        at j + 1 -> (the hidden the next step reads, draft-vocabulary logits for token j + 2)."""
        x = torch.cat([self.model.embed_tokens(tokens), features.to(self.dtype)], dim=-1)
        hidden = self.model(inputs_embeds=x, cache=cache, use_cache=cache is not None, **inputs).last_hidden_state
        return hidden, self.sub_logits(hidden)

    def unrolled(self, features: torch.Tensor, tokens: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Training-time test: `steps` draft steps at every position at once. features (B, L, d) fused, tokens (B, L)
        the sequences; entry i is step i's pre-norm hidden (B, L, d), whose `sub_logits` at position j predict
        token j + 2 + i: what drafting computes after position j when its first i drafts were right."""
        layer, (batch, length) = self.model.layers[0], tokens.shape
        causal = torch.full((length, length), float("-inf"), device=features.device).triu(1).to(features.dtype)
        positions = torch.arange(length, device=features.device)[None].expand(batch, -1)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        hidden, out = features, []
        for i in range(steps):
            fed = nn.functional.pad(tokens[:, 1 + i :], (0, 1 + i))  # token j + 1 + i at position j
            cos, sin = self.model.rotary_emb(hidden, positions + i)  # step i sits i positions further on
            hidden = layer.block(self.model.embed_tokens(fed), hidden,
                                 lambda x: _unrolled_attention(layer.self_attn, x, cos, sin, keys, values, causal))
            out.append(hidden)
        return out


def unrolled_mask(length: int, steps: int) -> torch.Tensor:
    """Which keys each query of the unrolled pass sees, as one dense (steps * L, steps * L) bool matrix, step-major.

    Query (step i, position j) sees step 0's keys at positions <= j (the true context) and its own
    keys of steps 1..i at position j (its earlier drafts): what drafting after position j attends to.
    `_unrolled_attention` computes exactly this without building it: one causal block and diagonals.
    """
    i = torch.arange(steps).repeat_interleave(length)[:, None]
    j = torch.arange(length).repeat(steps)[:, None]
    m, k = i.T, j.T  # the keys' step and position
    return ((m == 0) & (k <= j)) | ((m >= 1) & (m <= i) & (k == j))


def _unrolled_attention(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   keys: list[torch.Tensor], values: list[torch.Tensor], causal: torch.Tensor) -> torch.Tensor:
    """Attention of unrolled step i = len(keys): each position attends to step 0's keys up to itself
    (the true context) and to its own keys of steps 1..i (one per earlier draft), as drafting does."""
    batch, length, _ = x.shape
    q = attn.q_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    keys.append(repeat_kv(k, attn.num_key_value_groups))
    values.append(repeat_kv(v, attn.num_key_value_groups))
    scores = [torch.matmul(q, keys[0].transpose(2, 3)) * attn.scaling + causal]  # (B, H, L, L)
    scores += [(q * key).sum(-1, keepdim=True) * attn.scaling for key in keys[1:]]  # (B, H, L, 1) each: the diagonal
    weights = torch.softmax(torch.cat(scores, dim=-1).float(), dim=-1).to(q.dtype)
    out = torch.matmul(weights[..., :length], values[0])
    for m, value in enumerate(values[1:]):
        out = out + weights[..., length + m, None] * value
    return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


def eagle3_config(target_config: LlamaConfig, vocab_ids: torch.Tensor, target_layers: tuple[int, ...] | None = None) -> LlamaConfig:
    """The target's config cut to one layer, with the draft vocabulary and the fused target layers recorded."""
    config = draft_config(target_config, 1, len(vocab_ids))
    config.architectures = [Eagle3Head.__name__]
    config.target_layers = list(target_layers or default_target_layers(target_config.num_hidden_layers))
    config.target_hidden_size = target_config.hidden_size
    return config


def eagle3_from_target(
    target: PreTrainedModel, vocab_ids: torch.Tensor, target_layers: tuple[int, ...] | None = None, seed: int = 0,
    input_rms: torch.Tensor | None = None,
) -> Eagle3Head:
    """A new head for `target`: random layer and fc (seeded), the target's embeddings, final norm and head rows.

    The head's normed output plays the target's top hidden state one position on, so the target's
    LM-head rows are where its logits start (and its final norm, tempered by NORM_INIT_SCALE). `input_rms` (3 d_target,), the RMS of each
    fused input dimension over some data (`train_eagle3.state_rms`), scales fc's columns so that the
    fused feature starts at RMS ~1: a target's residual stream has a few dimensions hundreds of times
    larger than the rest, which would otherwise swamp a random fc.
    """
    torch.manual_seed(seed)
    config = eagle3_config(target.config, vocab_ids, target_layers)
    head = Eagle3Head(config).to(target.device)
    std = config.initializer_range
    with torch.no_grad():
        for module in head.modules():  # transformers' Llama init (normal, std 0.02) for every linear layer
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
        if input_rms is not None:
            fan_in = head.fc.in_features
            head.fc.weight.copy_(torch.randn_like(head.fc.weight) / (fan_in**0.5 * input_rms.to(head.fc.weight).clamp(min=1e-3)))
        head.model.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
        head.norm.weight.copy_(NORM_INIT_SCALE * target.model.norm.weight)
        head.lm_head.weight.copy_(target.lm_head.weight[vocab_ids.to(target.device)])
        head.vocab_ids.copy_(vocab_ids)
    return head.to(dtype=target.dtype).eval()


def load_eagle3(target: PreTrainedModel, folder: str | Path = SMOLLM2_EAGLE3_DIR) -> Eagle3Head:
    """Load a saved EAGLE-3 head onto the target's device and dtype (input embeddings come from the target)."""
    head = load_draft(target, folder, cls=Eagle3Head)
    if max(head.target_layers) > target.config.num_hidden_layers:
        raise ValueError(f"{folder} reads target layers {head.target_layers}; this target has {target.config.num_hidden_layers}")
    return head


# A bare Eagle3Head passed as the draft drafts in feature space, like chapter 08's head.
register_adapter(Eagle3Head, EagleDrafter)


# vLLM's eagle3 checkpoint names (vllm/model_executor/models/llama_eagle3.py): the layer is `midlayer`,
# `d2t` holds target id - draft id per draft id, `t2d` marks the target ids the draft scores, and the
# input embeddings are the target's (left out, as here). For exporting the head to vLLM (the serving chapter).
VLLM_ARCHITECTURE = "LlamaForCausalLMEagle3"


def vllm_eagle3_layout(head: Eagle3Head) -> tuple[dict[str, torch.Tensor], dict]:
    """The head's weights and config as vLLM's `eagle3` speculative method loads them."""
    state = {}
    for name, tensor in head.state_dict().items():
        if name == "model.embed_tokens.weight" or name == "vocab_ids":
            continue  # shared with the target / turned into d2t and t2d below
        state[name.replace("model.layers.0.", "midlayer.")] = tensor.detach().cpu()
    ids = head.vocab_ids.cpu()
    state["d2t"] = ids - torch.arange(len(ids))
    state["t2d"] = torch.zeros(head.config.vocab_size, dtype=torch.bool).index_fill_(0, ids, True)
    c = head.config
    config = {
        "architectures": [VLLM_ARCHITECTURE], "model_type": "llama", "num_hidden_layers": 1,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "hidden_act": c.hidden_act,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
        "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0),
        "vocab_size": c.vocab_size, "draft_vocab_size": c.draft_vocab_size, "target_hidden_size": c.target_hidden_size,
        "tie_word_embeddings": False, "torch_dtype": str(head.dtype).removeprefix("torch."),
        "eagle_aux_hidden_state_layer_ids": list(c.target_layers),
    }
    return state, config
