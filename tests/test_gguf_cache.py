"""The converted copy of the GGUF target: the same model and tokenizer as a fresh conversion, and every way it can fail."""

import shutil

import pytest
import torch

from specdec_lib.models import gguf_cache
from specdec_lib.models.gguf_cache import CACHE_ENV, cache_root, cached_load, copy_folder
from specdec_lib.testing import tiny_model, word_tokenizer


class Converter:
    """A stand-in for the GGUF conversion that counts its calls and carries a fake quantizer, as a GGUF load does."""

    def __init__(self):
        self.calls = 0
        self.model = tiny_model("llama", vocab_size=64)
        self.model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}

    def __call__(self):
        self.calls += 1
        return self.model, word_tokenizer()


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    """A file standing for the GGUF model, with the cache in a fresh folder."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return path


def same_weights(a, b) -> bool:
    """Every tensor of two models' state dicts is equal (and the keys match)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_second_load_reads_the_copy_with_the_same_weights(gguf):
    convert = Converter()
    first, _ = cached_load(gguf, torch.float32, convert)
    second, tokenizer = cached_load(gguf, torch.float32, convert)
    assert convert.calls == 1
    assert same_weights(first, second)
    assert tokenizer("t5 t7").input_ids == [5, 7]
    assert "quantization_config" not in second.config.to_dict()  # a plain folder, not a pointer to the GGUF file
    assert first.config.quantization_config["quant_method"] == "gguf"  # the converted model is left as it was
    assert list(copy_folder(gguf, cache_root()).parent.iterdir()) == [copy_folder(gguf, cache_root())]  # no partials


def test_copy_stays_float32_whatever_dtype_is_asked(gguf):
    convert = Converter()
    half, _ = cached_load(gguf, torch.bfloat16, convert)
    assert half.dtype == torch.bfloat16
    full, _ = cached_load(gguf, torch.float32, convert)
    assert full.dtype == torch.float32 and convert.calls == 1
    assert same_weights(full, Converter().model)  # bf16 first did not round the copy


def test_cache_off_converts_every_time_and_writes_nothing(gguf, monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_root() is None
    convert = Converter()
    cached_load(gguf, torch.float32, convert)
    cached_load(gguf, torch.float32, convert)
    assert convert.calls == 2
    assert not (tmp_path / "cache").exists()


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "specdec"


def test_a_new_gguf_file_gets_a_new_copy(gguf):
    before = copy_folder(gguf, cache_root())
    gguf.write_bytes(b"GGUF, another version")
    assert copy_folder(gguf, cache_root()) != before


def test_damaged_copy_is_reported_and_replaced(gguf):
    convert = Converter()
    cached_load(gguf, torch.float32, convert)
    folder = copy_folder(gguf, cache_root())
    (folder / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="could not be read"):
        model, _ = cached_load(gguf, torch.float32, convert)
    assert convert.calls == 2 and same_weights(model, convert.model)
    again, _ = cached_load(gguf, torch.float32, convert)
    assert convert.calls == 2 and same_weights(again, convert.model)


def test_unwritable_cache_is_reported_and_the_load_goes_on(gguf, monkeypatch, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # a folder inside a file can't be made
    convert = Converter()
    with pytest.warns(UserWarning, match="could not keep a converted copy"):
        model, _ = cached_load(gguf, torch.float32, convert)
    assert same_weights(model, convert.model)


def test_a_race_lost_to_another_process_keeps_its_copy(gguf, monkeypatch):
    """Two workers converting at once: the second rename fails, its partial folder goes, the first copy stays."""
    convert = Converter()
    folder = copy_folder(gguf, cache_root())
    real_save = gguf_cache.save_plain

    def other_process_wins(model, tokenizer, partial):
        real_save(model, tokenizer, folder)  # the other worker's finished copy
        return real_save(model, tokenizer, partial)

    monkeypatch.setattr(gguf_cache, "save_plain", other_process_wins)
    cached_load(gguf, torch.float32, convert)
    assert list(folder.parent.iterdir()) == [folder]
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(folder.parent))
    cached_load(gguf, torch.float32, convert)
    assert convert.calls == 1


@pytest.mark.slow
def test_copy_of_the_embedded_target_equals_a_fresh_conversion(monkeypatch, tmp_path):
    """The real SmolLM2 GGUF: weights, config, generation settings, tokenizer, chat template and greedy text all equal."""
    from specdec_lib.models.pairs import convert_gguf, load_smollm2, smollm2_gguf_path

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    fresh, fresh_tok = convert_gguf(smollm2_gguf_path())
    try:
        load_smollm2(torch.device("cpu"), torch.float32)  # writes the copy
        copy, copy_tok = load_smollm2(torch.device("cpu"), torch.float32)  # reads it
        assert len(list(tmp_path.iterdir())) == 1
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 520 MB that pytest would otherwise keep for three runs
    assert same_weights(fresh, copy)
    assert copy.config.architectures == ["LlamaForCausalLM"]  # save_pretrained names the class; the GGUF config didn't
    drop = ("quantization_config", "_name_or_path", "transformers_version", "architectures")
    assert ({k: v for k, v in fresh.config.to_dict().items() if k not in drop}
            == {k: v for k, v in copy.config.to_dict().items() if k not in drop})
    assert fresh.generation_config.to_diff_dict() == copy.generation_config.to_diff_dict()
    texts = ["The capital of France is", "  spaces\tand\nlines ", "émigré 東京 🙂", "<|im_start|>user\nhi<|im_end|>"]
    assert [fresh_tok(t).input_ids for t in texts] == [copy_tok(t).input_ids for t in texts]
    assert (fresh_tok.eos_token_id, fresh_tok.bos_token_id, fresh_tok.pad_token_id) == \
           (copy_tok.eos_token_id, copy_tok.bos_token_id, copy_tok.pad_token_id)
    chat = [{"role": "user", "content": "Name a colour."}]
    prompt = fresh_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt == copy_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = fresh_tok(prompt, return_tensors="pt").input_ids
    settings = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
    assert torch.equal(fresh.eval().generate(ids, **settings), copy.generate(ids, **settings))
