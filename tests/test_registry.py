"""A new kind of draft is one new file: a drafter defined here registers by name and runs through load_pair and the bench."""

import json

import pytest
import torch

from conftest import cached_pair, prompts
from specdec_lib import autoregressive_generate, speculative_generate
from specdec_lib.bench import SPEC_CACHED, TARGET_ONLY, benchmark
from specdec_lib.cli.bench import main as bench
from specdec_lib.drafters import DrafterBase, Proposal, as_drafter, draft_kind, draft_names, register_draft
from specdec_lib.models import load_pair
from specdec_lib.models import pairs


class RepeatDrafter(DrafterBase):
    """Guesses that the last token repeats k times: no model, and defined nowhere in the library."""

    def __init__(self):
        self.updates = []

    def propose(self, seq, k, sampler):
        """The last token, k times (deterministic, so sampling stays exact too)."""
        return Proposal(seq[0, -1:].repeat(k))

    def update(self, seq, record, verified):
        """Remember what each step told it: the record (accepted path included) and the sequence length."""
        self.updates.append((seq.shape[1], record.n_accepted, list(record.path)))


NAME = "test-repeat"
register_draft(NAME, lambda target: RepeatDrafter(), "the last token, repeated (a test drafter)")


def test_a_registered_drafter_is_listed_for_every_preset():
    assert draft_kind(NAME).fits(None) and NAME in draft_names() and NAME in draft_names("smollm2")


def test_load_pair_finds_a_drafter_by_name(monkeypatch):
    """load_pair("smollm2", draft=NAME) builds it, with no edit to any library file (a tiny target stands in for SmolLM2)."""
    target, _ = cached_pair("llama", "medium")
    monkeypatch.setattr(pairs, "load_smollm2", lambda device, dtype: (target, None))
    pair = load_pair("smollm2", draft=NAME, device="cpu", cpu_kernels=False)
    assert isinstance(pair.draft, RepeatDrafter) and "a test drafter" in pair.name
    for p in prompts()[::5]:
        out = speculative_generate(pair.target, pair.draft, p, max_new_tokens=16, k=3)
        assert torch.equal(out.sequences, autoregressive_generate(target, p, max_new_tokens=16))
        assert [u[1] for u in pair.draft.updates[-len(out.stats.steps):]] == out.stats.accepted
        assert all(path == list(range(n)) for _, n, path in pair.draft.updates)


def test_the_bench_runner_and_command_line_time_it(tmp_path):
    target, _ = cached_pair("gpt2", "medium")
    result = benchmark(target, as_drafter(RepeatDrafter()), prompts()[3:5], k=2, max_new_tokens=8, repeats=1, progress=False)
    assert set(result.methods) == {TARGET_ONLY, "speculative, uncached", SPEC_CACHED}  # no transformers counterpart
    assert result.outputs_agree and result.c == 0.0
    out = tmp_path / "r.json"
    report = bench(["--preset", "tiny-gpt2", "--draft", NAME, "--k", "1,2", "--max-new-tokens", "8", "--num-prompts", "2",
                    "--repeats", "1", "--hf", "--out", str(out)])
    assert "a test drafter" in report["pair"] and json.loads(out.read_text())["pair"] == report["pair"]
    assert all(r["outputs_match_target"] is True and "hf_method" not in r for r in report["runs"])


def test_a_drafter_missing_members_is_a_clear_type_error():
    class Half:
        def propose(self, seq, k, sampler):
            return Proposal(seq[0, -1:])

    with pytest.raises(TypeError, match="lacks model, needs_hidden_states, calls, start, update"):
        speculative_generate(cached_pair("gpt2", "medium")[0], Half(), prompts()[3], max_new_tokens=4)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        as_drafter(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bad", ["", "a,b", 3])
def test_bad_names_are_refused(bad):
    with pytest.raises(ValueError, match="name"):
        register_draft(bad, lambda target: RepeatDrafter(), "bad")
