"""Serving (chapter 12) without vLLM: layouts, exports, counters, the server's plumbing and the CLI's errors.

The runs through vLLM itself are in tests/test_vllm_live.py (they need `make vllm`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from specdec_lib.models.draft_model import draft_from_target
from specdec_lib.serving import layout
from specdec_lib.serving.__main__ import main as serving_main
from specdec_lib.serving.course import accepted_per_position, course_run
from specdec_lib.serving.engine import acceptance_summary, counters_since, spec_counters
from specdec_lib.serving.export import export_target, plain_draft, proposals_kept
from specdec_lib.serving.server import parse_spec_metrics, server_command, stop
from specdec_lib.testing import ToyTokenizer, noisy_copy, tiny_model

ROOT = layout.ROOT


def test_each_method_maps_to_vllms_speculative_config(tmp_path):
    assert layout.speculative_config("none", 3) is None
    assert layout.speculative_config("ngram", 3) == {"method": "ngram", "num_speculative_tokens": 3,
                                                      "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    assert layout.speculative_config("draft", 2, tmp_path) == {"method": "draft_model", "num_speculative_tokens": 2,
                                                                "model": str(tmp_path / "draft")}
    assert layout.speculative_config("eagle", 4, tmp_path)["method"] == "eagle3"
    with pytest.raises(ValueError, match="unknown method 'medusa'"):
        layout.speculative_config("medusa", 3)
    with pytest.raises(ValueError, match="at least 1"):
        layout.speculative_config("ngram", 0)


def test_prompt_files_keep_newlines_and_refuse_what_they_cannot(tmp_path):
    prompts = ["def f(x):\n    return", "one line", "Dear Sir,\n\nI write"]
    path = layout.write_prompt_file(prompts, tmp_path / "p.txt")
    assert len(path.read_text().splitlines()) == 3
    assert layout.read_prompt_file(path) == prompts
    with pytest.raises(ValueError, match="backslash-n"):
        layout.write_prompt_file(["a literal \\n"], tmp_path / "q.txt")


def _metric(name: str, value=None, values=None):
    return SimpleNamespace(name=name, value=value, values=values)


def test_vllms_counters_are_read_and_the_warm_up_left_out():
    before = spec_counters([_metric("vllm:spec_decode_num_drafts", 4), _metric("vllm:spec_decode_num_draft_tokens", 12),
                            _metric("vllm:spec_decode_num_accepted_tokens", 5),
                            _metric("vllm:spec_decode_num_accepted_tokens_per_pos", values=[3, 2])])
    after = spec_counters([_metric("vllm:spec_decode_num_drafts", 14), _metric("vllm:spec_decode_num_draft_tokens", 42),
                           _metric("vllm:spec_decode_num_accepted_tokens", 20),
                           _metric("vllm:spec_decode_num_accepted_tokens_per_pos", values=[9, 6, 5]),
                           _metric("vllm:num_requests_running", 0)])
    grown = counters_since(after, before)
    assert grown == {"drafts": 10, "draft_tokens": 30, "accepted": 15, "per_position": [6, 4, 5]}
    summary = acceptance_summary(grown)
    assert summary["alpha"] == 0.5 and summary["rate_per_position"] == [0.6, 0.4, 0.5]
    assert spec_counters([])["per_position"] == [] and acceptance_summary(spec_counters([]))["alpha"] is None


def test_the_servers_metrics_page_is_parsed():
    page = """# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="target"} 8.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="target"} 22.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="target"} 6.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="target",position="1"} 2.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="target",position="0"} 3.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="target",position="2"} 1.0
vllm:num_requests_running{engine="0",model_name="target"} 0.0
"""
    assert parse_spec_metrics(page) == {"drafts": 8, "draft_tokens": 22, "accepted": 6, "per_position": [3, 2, 1]}
    assert parse_spec_metrics("") == {"drafts": 0, "draft_tokens": 0, "accepted": 0, "per_position": []}


def test_the_server_command_carries_the_speculative_config(tmp_path):
    command = server_command("draft", 3, 8123, tmp_path, python="python")
    assert command[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "8123"
    config = json.loads(command[command.index("--speculative-config") + 1])
    assert config == {"method": "draft_model", "num_speculative_tokens": 3, "model": str(tmp_path / "draft")}
    assert "--speculative-config" not in server_command("none", 3, 8123, tmp_path)


def test_stop_ends_the_whole_process_group():
    """A server spawns engine processes; stopping it by its PID must end them too."""
    process = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                               start_new_session=True)
    time.sleep(0.5)
    started = time.perf_counter()
    assert stop(process, timeout_s=10) is not None
    assert time.perf_counter() - started < 10
    assert _living_in_group(process.pid, wait_s=5) == []


def _living_in_group(pgid: int, wait_s: float) -> list[str]:
    """Processes of group pgid that are still running (not zombies) after up to wait_s seconds."""
    deadline = time.perf_counter() + wait_s
    while True:
        table = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
        living = [row for row in table if row.split()[1:2] == [str(pgid)] and not row.split()[2].startswith("Z")]
        if not living or time.perf_counter() > deadline:
            return living
        time.sleep(0.1)


def restricted(vocab: int = 32, kept: int = 20, seed: int = 0):
    """A tiny Llama target and a 1-layer draft scoring `kept` of its ids (the lowest ids left out)."""
    target = tiny_model("llama", vocab_size=vocab, n_layer=2, hidden=32, seed=seed)
    draft = draft_from_target(noisy_copy(target, 0.3), [0], torch.arange(vocab - kept, vocab))
    return target, draft


def test_the_plain_draft_proposes_what_the_restricted_one_does_wherever_its_best_logit_is_positive():
    target, draft = restricted()
    plain = plain_draft(draft)
    assert type(plain).__name__ == "LlamaForCausalLM" and plain.lm_head.weight.shape == (32, 32)
    ids = torch.randint(0, 32, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        restricted_logits, plain_logits = draft(ids).logits, plain(ids).logits
    kept = torch.isfinite(restricted_logits)
    assert torch.allclose(plain_logits[kept], restricted_logits[kept], atol=1e-5)  # the same numbers where both score
    assert (plain_logits[~kept] == 0).all()
    positive = restricted_logits.max(-1).values > 0
    assert positive.any()
    assert torch.equal(plain_logits.argmax(-1)[positive], restricted_logits.argmax(-1)[positive])
    report = proposals_kept(draft, plain, ids)
    assert report["positions"] == 96 and report["same"] >= int(positive.sum())
    assert report["lowest_best_logit"] == pytest.approx(float(restricted_logits.max(-1).values.min()))


def test_the_plain_draft_does_not_hide_a_negative_best_logit():
    """Where every scored logit is negative, an unscored id (logit 0) wins: proposals_kept must count it."""
    target, draft = restricted()
    with torch.no_grad():
        draft.lm_head.weight.mul_(-1e-3).sub_(0.0)
        draft.model.norm.weight.fill_(1.0)
        draft.lm_head.weight.copy_(-draft.lm_head.weight.abs() - 1.0)  # push every scored logit below 0
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1))
    report = proposals_kept(draft, plain_draft(draft), ids)
    assert report["lowest_best_logit"] < 0 and report["same"] < report["positions"]


def test_the_exported_target_loads_as_a_plain_model_with_the_same_logits(tmp_path):
    target = tiny_model("llama", vocab_size=32, hidden=32)
    target.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}  # as a GGUF load leaves it
    tokenizer = SimpleNamespace(save_pretrained=lambda folder: (folder / "tokenizer.json").write_text("{}"))
    export_target(target, tokenizer, tmp_path / "t")
    assert "quantization_config" not in json.loads((tmp_path / "t" / "config.json").read_text())
    assert target.config.quantization_config["quant_method"] == "gguf"  # the loaded model is left as it was
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "t").eval()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, target(ids).logits)


def test_the_course_side_counts_as_vllm_does():
    target = tiny_model("llama", vocab_size=64, hidden=32)
    draft = noisy_copy(target, 0.5)
    prompts = ["hello world", "abc abc abc", "the cat"]
    plain = course_run(target, ToyTokenizer(), "none", 3, prompts, 12)
    spec = course_run(target, ToyTokenizer(), "draft", 3, prompts, 12, draft=draft)
    assert spec["token_ids"] == plain["token_ids"] and all(len(t) == 12 for t in plain["token_ids"])
    a = spec["acceptance"]
    assert 0 < a["drafts"] and a["accepted"] <= a["draft_tokens"] <= 3 * a["drafts"]
    assert len(a["per_position"]) == 3 and sum(a["per_position"]) == a["accepted"]
    assert a["per_position"] == sorted(a["per_position"], reverse=True) and a["per_position"][0] <= a["drafts"]
    assert plain["acceptance"]["drafts"] == 0 and plain["k"] == 0
    with pytest.raises(ValueError, match="unknown method"):
        course_run(target, ToyTokenizer(), "medusa", 3, prompts, 4)


def test_acceptance_per_position_counts_steps_that_reached_each_position():
    assert accepted_per_position([0, 3, 1, 2], 3) == [3, 2, 1]
    assert accepted_per_position([], 2) == [0, 0]


@pytest.mark.parametrize("argv, message", [
    (["export", "--only", "target,medusa"], "--only takes names from target,draft,eagle"),
    (["run", "--prompts", "p.txt", "--models", "{tmp}/nothing"], "lacks target, draft, eagle: run `make vllm`"),
])
def test_the_cli_says_what_is_wrong(argv, message, tmp_path, capsys):
    assert serving_main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [(["--k", "0"], "must be at least 1"), (["--ngram", "4,2"], "need 1 <= MIN <= MAX"),
                                            (["--ngram", "three"], "expected MIN,MAX")])
def test_the_cli_refuses_bad_numbers(extra, message, capsys):
    with pytest.raises(SystemExit):
        serving_main(["run", "--prompts", "p.txt", *extra])
    assert message in capsys.readouterr().err


def test_the_package_front_door_is_lazy():
    """vLLM's venv runs `python -m specdec_lib.serving`: importing the package must not import the loop (or torch)."""
    code = ("import sys, specdec_lib, specdec_lib.serving; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'eager import'; "
            "from specdec_lib import load_pair, speculative_step; print(load_pair.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "specdec_lib.models.pairs"
    import specdec_lib

    assert sorted(specdec_lib.__all__) == sorted(specdec_lib._HOME)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        specdec_lib.nope  # noqa: B018
