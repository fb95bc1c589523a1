"""Every command line, every flag, a bad value: exit status 2, one argparse error line naming the flag, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specdec_lib.cli.bench import main as bench
from specdec_lib.cli.training import main as training

NO_DIR = "/nonexistent-folder/out.json"

# (command, argv, the flag the error must name). Each value fails before any model loads, except
# where a comment says it fails at load time (still before any decoding).
BENCH = [
    ("--preset", ["--preset", "nope"]),
    ("--target", ["--target", "/nonexistent-model", "--draft", "/nonexistent-draft"]),  # at load: no such model
    ("--draft", ["--draft", "nope"]),  # at load: not a SmolLM2 draft
    ("--k", ["--k", "0"]),
    ("--k", ["--k", "abc"]),
    ("--temperature", ["--temperature", "-1"]),
    ("--temperature", ["--temperature", "nan"]),
    ("--max-new-tokens", ["--max-new-tokens", "0"]),
    ("--prompts", ["--prompts", "/nonexistent.txt"]),
    ("--num-prompts", ["--num-prompts", "-3"]),
    ("--repeats", ["--repeats", "zero"]),
    ("--device", ["--device", "tpu"]),
    ("--device", ["--device", "cuda:7"]),
    ("--dtype", ["--dtype", "float8"]),
    ("--out", ["--out", NO_DIR]),
    ("--plot", ["--plot", NO_DIR]),
    ("--alpha", ["--alpha", "1.5"]),
    ("--alpha", ["--alpha", "/nonexistent.json"]),
    ("--alpha", ["--alpha", "0.5", "--temperature", "1"]),
    ("--confidence-threshold", ["--confidence-threshold", "1.5"]),
    ("--confidence-threshold", ["--preset", "tiny-gpt2", "--draft", "prompt-lookup", "--confidence-threshold", "0.4"]),
    ("--schedule", ["--schedule", "fast"]),
    ("--cost-aware", ["--preset", "tiny-gpt2", "--draft", "prompt-lookup", "--cost-aware"]),  # no draft model to stop
    ("--cost-aware", ["--cost-aware=yes"]),
    ("--prompt-set", ["--prompt-set", "nope"]),
    ("--chat", ["--preset", "tiny-gpt2", "--chat"]),  # the random pairs have no tokenizer
    ("--cache", ["--cache", "paged"]),
    ("--compile", ["--compile"]),  # needs --cache static
    ("--compile", ["--preset", "tiny-gpt2", "--tree", "2", "--cache", "static", "--compile"]),  # trees run eagerly
    ("--draft", ["--preset", "tiny-gpt2", "--draft", "int8"]),  # the random pairs bring their own draft
    ("--draft", ["--preset", "tiny-gpt2", "--draft", "eagle"]),
    ("--hf", ["--hf=yes"]),  # switches take no value
    ("--no-cpu-kernels", ["--no-cpu-kernels=1"]),
]
COMPARE = [
    ("--pair", ["--pair", "nope"]),
    ("--k", ["--k", "0"]),
    ("--max-new-tokens", ["--max-new-tokens", "-1"]),
    ("--prompts", ["--prompts", "0"]),
    ("--repeats", ["--repeats", "1.5"]),
    ("--no-hf", ["--no-hf=1"]),
    ("--cache", ["--cache", "paged"]),
    ("--compile", ["--compile"]),
    ("--dtype", ["--dtype", "float8"]),
    ("--device", ["--device", "tpu"]),
    ("--out", ["--out", NO_DIR]),
]
TRAINING = [
    ("--threads", ["data", "--out", "/tmp/c.pt", "--threads", "-1"]),
    ("--minutes", ["data", "--out", "/tmp/c.pt", "--minutes", "0"]),
    ("--batch-size", ["data", "--out", "/tmp/c.pt", "--batch-size", "0"]),
    ("--max-new-tokens", ["data", "--out", "/tmp/c.pt", "--max-new-tokens", "x"]),
    ("--seed", ["data", "--out", "/tmp/c.pt", "--seed", "1.5"]),
    ("--start", ["data", "--out", "/tmp/c.pt", "--start", "-1"]),
    ("--max-prompts", ["data", "--out", "/tmp/c.pt", "--max-prompts", "0"]),
    ("--out", ["data", "--out", NO_DIR]),
    ("--data", ["train", "--out", "/tmp/d", "--data", "/nonexistent.pt"]),
    ("--layers", ["train", "--out", "/tmp/d", "--data", __file__, "--layers", "0,-1"]),
    ("--vocab-size", ["train", "--out", "/tmp/d", "--data", __file__, "--vocab-size", "0"]),
    ("--steps", ["train", "--out", "/tmp/d", "--data", __file__, "--steps", "ten"]),
    ("--lr", ["train", "--out", "/tmp/d", "--data", __file__, "--lr", "-0.1"]),
    ("--eval-every", ["train", "--out", "/tmp/d", "--data", __file__, "--eval-every", "0"]),
    ("--out", ["train", "--data", __file__, "--out", NO_DIR]),
    ("--init", ["train", "--out", "/tmp/d", "--data", __file__, "--init", "/nonexistent"]),
    ("--draft", ["onpolicy", "--out", "/tmp/o.pt", "--draft", "/nonexistent"]),
    ("--batch-size", ["onpolicy", "--out", "/tmp/o.pt", "--batch-size", "0"]),
    ("--max-new-tokens", ["onpolicy", "--out", "/tmp/o.pt", "--max-new-tokens", "-2"]),
    ("--max-prompts", ["onpolicy", "--out", "/tmp/o.pt", "--max-prompts", "0"]),
    ("--device", ["onpolicy", "--out", "/tmp/o.pt", "--device", "tpu"]),
    ("--out", ["onpolicy", "--out", NO_DIR]),
    ("--device", ["data", "--out", "/tmp/c.pt", "--device", "tpu"]),
    ("--data", ["eagle", "--out", "/tmp/d", "--data", "/nonexistent.pt"]),
    ("--init", ["eagle", "--out", "/tmp/d", "--data", __file__, "--init", "/nonexistent"]),
    ("--steps", ["eagle", "--out", "/tmp/d", "--data", __file__, "--steps", "0"]),
    ("--feature-weight", ["eagle", "--out", "/tmp/d", "--data", __file__, "--feature-weight", "-1"]),
    ("--noise", ["eagle", "--out", "/tmp/d", "--data", __file__, "--noise", "x"]),
    ("--out", ["eagle", "--data", __file__, "--out", NO_DIR]),
    ("--corpus", ["eagle3", "--out", "/tmp/d", "--store", "/tmp", "--corpus", "/nonexistent"]),
    ("--chunks", ["eagle3", "--out", "/tmp/d", "--store", "/tmp", "--corpus", "/tmp", "--chunks", "5:2"]),
    ("--ttt-steps", ["eagle3", "--out", "/tmp/d", "--store", "/tmp", "--corpus", "/tmp", "--ttt-steps", "0"]),
    ("--init", ["eagle3", "--out", "/tmp/d", "--store", "/tmp", "--corpus", "/tmp", "--init", "/nonexistent"]),
    ("--chunks", ["corpus", "--out", "/tmp/c", "--chunks", "x"]),
    ("--drafts", ["eval", "--drafts", "trained,nope"]),
    ("--max-new-tokens", ["eval", "--max-new-tokens", "0"]),
]
CASES = ([("bench", bench, flag, argv) for flag, argv in BENCH]
         + [("bench compare", bench, flag, ["compare", *argv]) for flag, argv in COMPARE]
         + [("training", training, flag, argv) for flag, argv in TRAINING])


@pytest.mark.parametrize("command, main, flag, argv", CASES, ids=[f"{c[0]} {' '.join(c[3])}" for c in CASES])
def test_bad_value_is_one_usage_error(command, main, flag, argv, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage:") and "error:" in lines[-1]
    assert flag in lines[-1], lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--prompts", "/nonexistent.txt"], ["--temperature", "-1"], ["--device", "tpu"]])
def test_reported_cases_end_cleanly_from_the_shell(argv):
    """The three cases the issue reported, as a learner types them: status 2, no traceback."""
    done = subprocess.run([sys.executable, "-m", "specdec_lib.bench", *argv], capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: argument {argv[0]}:" in done.stderr.strip().splitlines()[-1]
