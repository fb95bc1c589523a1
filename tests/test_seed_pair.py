"""The seed-sized random pair and the imposed acceptance rate used to time it (chapter 05)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from specdec_lib.cli.bench import main as bench
from specdec_lib.bench.runs import SPEC_CACHED, TARGET_ONLY, benchmark
from specdec_lib import speculative_generate
from specdec_lib import greedy_verify
from specdec_lib.bench.seed_pair import SEED_SHAPES, ImposedAcceptance, random_gpt2, read_alpha, seed_sized_pair
from specdec_lib.loop.sampling_check import chi2_pvalue
from specdec_lib.bench.theory import estimate_alpha, expected_tokens_per_step
from conftest import cached_pair


def accepted_distribution(alpha: float, k: int) -> np.ndarray:
    """P(n accepted) for i.i.d. acceptance: alpha^n (1 - alpha) below k, alpha^k at k."""
    return np.array([alpha**n * (1 - alpha) for n in range(k)] + [alpha**k])


class FixedLogits:
    """A stand-in model that returns the same logits for its last rows on every call (fast to call 4000 times)."""

    def __init__(self, logits: torch.Tensor):
        self.logits, self.device = logits, logits.device
        self.config = SimpleNamespace(vocab_size=logits.shape[-1])

    def __call__(self, input_ids: torch.Tensor, logits_to_keep: int = 0, **kwargs) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[-logits_to_keep:].clone()[None])


def imposed_verdicts(alpha: float, k: int, n: int, seed: int = 0) -> tuple[list[int], list[int], torch.Tensor]:
    """n greedy verifications of k drafts against an ImposedAcceptance target: accepted counts, next tokens, logits."""
    logits = torch.randn(k + 1, 50, generator=torch.Generator().manual_seed(1))
    logits[:, 0] = logits.min() - 1  # the drafts' token 0 is never the model's own choice
    target = ImposedAcceptance(FixedLogits(logits), alpha, torch.Generator().manual_seed(seed))
    fed = torch.zeros(1, k + 1, dtype=torch.long)  # the last token, then k drafts (all token 0)
    verdicts = [greedy_verify(fed[0, 1:], target(fed, logits_to_keep=k + 1).logits[0]) for _ in range(n)]
    return [v[0] for v in verdicts], [v[1] for v in verdicts], logits


@pytest.mark.parametrize("alpha", [0.376, 0.8])
def test_imposed_acceptance_is_iid_with_rate_alpha(alpha):
    k = 4
    counts, next_tokens, logits = imposed_verdicts(alpha, k, 4000)
    assert chi2_pvalue(counts, accepted_distribution(alpha, k)) > 1e-3
    # Against a rate 0.1 off, the same counts fail: the test can tell.
    assert chi2_pvalue(counts, accepted_distribution(alpha - 0.1, k)) < 1e-6
    # After the accepted prefix, the next token is the model's own choice there.
    assert all(t == int(logits[n].argmax()) for n, t in zip(counts, next_tokens) if n < k)


def test_imposed_acceptance_edges():
    assert set(imposed_verdicts(0.0, 3, 20)[0]) == {0}
    assert set(imposed_verdicts(1.0, 3, 20)[0]) == {3}
    model = FixedLogits(torch.randn(4, 10))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            ImposedAcceptance(model, bad)


def test_loop_under_imposed_alpha_matches_the_formula():
    """A draft that never agrees, with alpha imposed on the target: the loop makes the formula's tokens per call."""
    target, draft = cached_pair("gpt2", "low")
    alpha, k = 0.6, 3
    imposed = ImposedAcceptance(target, alpha, torch.Generator().manual_seed(0))
    out = speculative_generate(imposed, draft, torch.tensor([[1, 2, 3]]), max_new_tokens=240, k=k)
    stats = out.stats
    assert out.sequences.shape[1] == 3 + 240
    assert estimate_alpha(stats.proposed, stats.accepted) == pytest.approx(alpha, abs=0.06)
    full = [a for p, a in zip(stats.proposed, stats.accepted) if p == k]
    assert np.mean(full) + 1 == pytest.approx(expected_tokens_per_step(alpha, k), rel=0.12)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.compile)], ids=["static", "static+compiled"])
def test_imposed_alpha_on_a_static_cache(compiled):
    """Chapter 10 on the seed pair: the wrapper shares its model's static cache and imposes its verdict after the
    compiled call, so each seed draws the same accept/reject pattern as on the dynamic cache."""
    target, draft = cached_pair("gpt2", "low")

    def run(**loop) -> list[int]:
        imposed = ImposedAcceptance(target, 0.6, torch.Generator().manual_seed(1))
        return speculative_generate(imposed, draft, torch.tensor([[1, 2, 3]]), max_new_tokens=40, k=3, **loop).stats.accepted

    static = dict(cache_implementation="static", compile=compiled)
    assert run(**static) == run()
    cache = target.__dict__["_specdec_static_caches"]
    assert len(cache) == 1 and run(**static) and len(cache) == 1  # a new wrapper per run, the model's one cache


def test_benchmark_imposes_one_pattern_per_prompt():
    """Each prompt gets its own accept/reject draws, and the same ones on every call (repeats do equal work)."""
    target, draft = cached_pair("gpt2", "low")
    same = [torch.tensor([[5, 6, 7]])] * 2

    def accepted() -> list[list[int]]:
        r = benchmark(target, draft, same, k=3, max_new_tokens=40, repeats=1, include_hf=False,
                      include_uncached=False, impose_alpha=0.5, progress=False)
        return [s.accepted for s in r.methods[SPEC_CACHED].stats]

    first = accepted()
    assert first[0] != first[1]
    assert accepted() == first


def test_seed_sized_pair_has_the_hub_configs_sizes():
    target, draft = seed_sized_pair(device="meta")  # shapes only: no memory, no time
    # The parameter counts of the hub's gpt2-medium and gpt2 (tied head counted once).
    assert sum(p.numel() for p in target.parameters()) == 354_823_168
    assert sum(p.numel() for p in draft.parameters()) == 124_439_808
    assert target.config.vocab_size == draft.config.vocab_size == 50257
    assert (target.config.n_layer, target.config.n_embd) == SEED_SHAPES["gpt2-medium"][:2]


def test_random_gpt2_is_seeded():
    a, b = (random_gpt2((1, 32, 2), vocab_size=40, seed=3) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_read_alpha(tmp_path):
    assert read_alpha("0.4") == (0.4, "given")
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"alpha": 0.376}))
    assert read_alpha(str(path)) == (0.376, f"pooled alpha of {path}")
    (tmp_path / "bad.json").write_text("{}")
    for spec, match in [("1.2", r"\[0, 1\]"), ("nope.json", "neither"), (str(tmp_path / "bad.json"), "pooled")]:
        with pytest.raises(ValueError, match=match):
            read_alpha(spec)


def test_bench_cli_imposes_alpha(tmp_path):
    out = tmp_path / "r.json"
    report = bench(["--preset", "tiny-gpt2", "--alpha", "0.5", "--k", "2", "--max-new-tokens", "48",
                    "--num-prompts", "2", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["alpha_imposed"] == 0.5 == report["alpha_imposed"]
    run = report["runs"][0]
    assert run["outputs_match_target"] is None  # the imposed rule's tokens are not the target's
    assert run["alpha"] == pytest.approx(0.5, abs=0.15)
    assert "IMPOSED" in report["pair"]


@pytest.mark.parametrize("args", [["--preset", "seed-gpt2"], ["--preset", "tiny-gpt2", "--alpha", "0.5",
                                                               "--temperature", "1"], ["--alpha", "x.json"]])
def test_bench_cli_rejects_bad_alpha_use(args, capsys):
    with pytest.raises(SystemExit):
        bench(args)
    assert "alpha" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_results_script_dry_run(tmp_path):
    """scripts/gpu_results.sh, small and on the CPU: both pairs run (dynamic and static), the seed pair takes the first's alpha."""
    root = Path(__file__).resolve().parent.parent
    # The notebook step only collects here: running every notebook is `make test`'s job.
    env = dict(os.environ, PYTHON=sys.executable, DEVICE="cpu", DTYPE="float32", QUICK="1", NBVAL_ARGS="--collect-only")
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_results.sh"), str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    smollm2, seed = (json.loads((tmp_path / f"quick_cpu_{name}.json").read_text()) for name in ("smollm2", "seed_gpt2"))
    assert seed["alpha_imposed"] == pytest.approx(smollm2["alpha"])
    assert all(r["outputs_match_target"] for r in smollm2["runs"])
    assert [r["tree"] for r in smollm2["runs"]] == [None, None, [2, 1]]
    assert (tmp_path / "quick_cpu_seed_gpt2.png").stat().st_size > 10_000
    # Chapter 10's compare table (static and, on a GPU, compiled); QUICK leaves out the static sweeps, whose
    # command lines are the two above plus --cache/--compile (tests/test_bench_cli.py runs those flags).
    assert not list(tmp_path.glob("*_static.json"))
    compare = json.loads((tmp_path / "quick_cpu_smollm2_compare.json").read_text())
    assert {"target only (static cache)", "speculative (static cache)", "HF assisted generation"} <= set(compare["methods"])
    assert compare["methods"]["speculative (static cache)"]["outputs_match_target"]
    batch = json.loads((tmp_path / "quick_cpu_batch.json").read_text())
    assert batch["batch_sizes"] == [1, 2] and all(r["matches_target"] for r in batch["runs"])
    log = (tmp_path / "quick_cpu_notebooks.log").read_text()
    assert all(f"{name}.ipynb" in log for name in ("01_single_step", "06_train_your_own_draft")), log[-2000:]
