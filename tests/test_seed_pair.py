"""The seed-sized random pair and the imposed acceptance rate used to time it (chapter 05)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from specdec_lib.bench import METHODS, benchmark, main as bench
from specdec_lib.generate import speculative_generate
from specdec_lib.seed_pair import SEED_SHAPES, imposed_acceptance, random_gpt2, read_alpha, seed_sized_pair
from specdec_lib.stats import chi2_pvalue
from specdec_lib.theory import estimate_alpha, expected_tokens_per_step
from conftest import cached_pair


def accepted_distribution(alpha: float, k: int) -> np.ndarray:
    """P(n accepted) for i.i.d. acceptance: alpha^n (1 - alpha) below k, alpha^k at k."""
    return np.array([alpha**n * (1 - alpha) for n in range(k)] + [alpha**k])


@pytest.mark.parametrize("alpha", [0.376, 0.8])
def test_imposed_acceptance_is_iid_with_rate_alpha(alpha):
    k, gen = 4, torch.Generator().manual_seed(0)
    verify = imposed_acceptance(alpha, gen)
    logits = torch.randn(k + 1, 50, generator=torch.Generator().manual_seed(1))
    draws = [verify(torch.zeros(k, dtype=torch.long), logits) for _ in range(4000)]
    counts = [int(n) for n, _ in draws]
    assert chi2_pvalue(counts, accepted_distribution(alpha, k)) > 1e-3
    # Against a rate 0.1 off, the same counts fail: the test can tell.
    assert chi2_pvalue(counts, accepted_distribution(alpha - 0.1, k)) < 1e-6
    assert all(int(t) == int(logits[int(n)].argmax()) for n, t in draws)


def test_imposed_acceptance_edges():
    logits, drafts = torch.randn(4, 10), torch.zeros(3, dtype=torch.long)
    assert int(imposed_acceptance(0.0)(drafts, logits)[0]) == 0
    assert int(imposed_acceptance(1.0)(drafts, logits)[0]) == 3
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            imposed_acceptance(bad)


def test_loop_under_imposed_alpha_matches_the_formula():
    """A draft that never agrees, with alpha imposed: the loop makes the formula's tokens per target call."""
    target, draft = cached_pair("gpt2", "low")
    alpha, k = 0.6, 3
    rule = imposed_acceptance(alpha, torch.Generator().manual_seed(0))
    out = speculative_generate(target, draft, torch.tensor([[1, 2, 3]]), max_new_tokens=240, k=k, verifier=rule)
    stats = out.stats
    assert out.sequences.shape[1] == 3 + 240
    assert estimate_alpha(stats.proposed, stats.accepted) == pytest.approx(alpha, abs=0.06)
    full = [a for p, a in zip(stats.proposed, stats.accepted) if p == k]
    assert np.mean(full) + 1 == pytest.approx(expected_tokens_per_step(alpha, k), rel=0.12)


def test_benchmark_imposes_one_pattern_per_prompt():
    """Each prompt gets its own accept/reject draws, and the same ones on every call (repeats do equal work)."""
    target, draft = cached_pair("gpt2", "low")
    same = [torch.tensor([[5, 6, 7]])] * 2

    def accepted() -> list[list[int]]:
        r = benchmark(target, draft, same, k=3, max_new_tokens=40, repeats=1, include_hf=False,
                      include_uncached=False, impose_alpha=0.5, progress=False)
        return [s.accepted for s in r.methods[METHODS[2]].stats]

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


def test_gpu_results_script_dry_run(tmp_path):
    """scripts/gpu_results.sh, small and on the CPU: both pairs run, and the seed pair takes the first's alpha."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHON=sys.executable, DEVICE="cpu", DTYPE="float32", QUICK="1")
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_results.sh"), str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    smollm2, seed = (json.loads((tmp_path / f"quick_cpu_{name}.json").read_text()) for name in ("smollm2", "seed_gpt2"))
    assert seed["alpha_imposed"] == pytest.approx(smollm2["alpha"])
    assert all(r["outputs_match_target"] for r in smollm2["runs"])
    assert (tmp_path / "quick_cpu_seed_gpt2.png").stat().st_size > 10_000
