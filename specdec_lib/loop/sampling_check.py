"""Chapter 03's evidence that speculative sampling is lossless: a toy step, planted bugs, chi-square tests.

    python -m specdec_lib.loop.sampling_check

The toy step has a vocabulary of 8 and k = 2, so its exact output distribution is known and a
chi-square test over 20,000 runs tells the true rule from subtly wrong ones.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chisquare

from .sampling import acceptance_probability, rejection_verify, residual_distribution, sample

MIN_EXPECTED = 5  # the chi-square approximation needs about this many expected counts per cell


def chi2_pvalue(samples: np.ndarray | list[int], probs: torch.Tensor | np.ndarray) -> float:
    """Chi-square p-value of integer samples against probs; any sample where probs is 0 gives 0.0.

    Cells whose expected count is below MIN_EXPECTED are pooled into one, as the test requires.
    """
    samples = np.asarray(samples)
    probs = torch.as_tensor(probs).double().cpu().numpy()
    counts = np.bincount(samples, minlength=len(probs)).astype(float)
    if len(counts) > len(probs) or counts[probs == 0].sum() > 0:
        return 0.0
    expected = probs / probs.sum() * counts.sum()
    small = (expected < MIN_EXPECTED) & (probs > 0)
    keep = (probs > 0) & ~small
    obs, exp = counts[keep], expected[keep]
    if small.any():
        obs, exp = np.append(obs, counts[small].sum()), np.append(exp, expected[small].sum())
    return float(chisquare(obs, exp).pvalue)


TOY_VOCAB = 8
TOY_SAMPLES = 20_000  # a planted bug lands far below p = 1e-6 at this size; the true rule is ~U(0, 1)


def toy_distributions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Target p (3, TOY_VOCAB) and draft q (2, TOY_VOCAB), with zeros in q where p > 0 and in p where q > 0."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(3, TOY_VOCAB, generator=gen) ** 2
    q = torch.rand(2, TOY_VOCAB, generator=gen) ** 2
    p[0, 0] = 0.0  # the draft may propose a token the target never emits
    q[0, 1] = 0.0  # the target may want a token the draft never proposes
    p[1, 2] = 0.0
    q[1, 3] = 0.0
    return p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


def buggy_argmax_verify(
    draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Planted bug: accept a draft token only when it is the target's argmax ("accept if equal")."""
    k = len(draft_tokens)
    for i in range(k):
        if int(draft_tokens[i]) != int(target_probs[i].argmax()):
            return i, int(sample(residual_distribution(target_probs[i], draft_probs[i]), generator))
    return k, int(sample(target_probs[k], generator))


def buggy_resample_from_p(
    draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Planted bug: the min(1, p/q) test is right, but a rejection resamples from p, not the residual."""
    u = torch.rand(len(draft_tokens), generator=generator)
    for i, x in enumerate(draft_tokens.tolist()):
        if not u[i] * draft_probs[i, x] < target_probs[i, x]:
            return i, int(sample(target_probs[i], generator))
    return len(draft_tokens), int(sample(target_probs[-1], generator))


def run_toy_verifier(verifier, n: int = TOY_SAMPLES, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a verifier n times on the toy step; return the first and second emitted tokens and n_accepted."""
    p, q = toy_distributions()
    gen = torch.Generator().manual_seed(seed)
    draft_tokens = torch.stack([torch.multinomial(q[i], n, replacement=True, generator=gen) for i in range(2)], 1)
    first, second, accepted = [], [], []
    for row in draft_tokens:
        n_acc, nxt = verifier(row, q, p, gen)
        emitted = row[:n_acc].tolist() + [nxt]
        first.append(emitted[0])
        second.append(emitted[1] if len(emitted) > 1 else -1)
        accepted.append(n_acc)
    return np.array(first), np.array(second), np.array(accepted)


VERIFIERS = {
    "rejection_verify (the real rule)": rejection_verify,
    "planted bug: accept only the target's argmax": buggy_argmax_verify,
    "planted bug: resample from p, not the residual": buggy_resample_from_p,
}


def main() -> None:
    """Run each verifier on the toy step and print chi-square p-values and acceptance vs theory."""
    p, q = toy_distributions()
    theory = acceptance_probability(p[:2], q).tolist()
    print(f"toy step: vocabulary {p.shape[1]}, k=2, {TOY_SAMPLES} samples per verifier\n")
    for name, verifier in VERIFIERS.items():
        first, second, accepted = run_toy_verifier(verifier)
        both = accepted >= 1
        print(name)
        print(f"  first token vs p0:            p-value {chi2_pvalue(first, p[0]):.3g}")
        print(f"  second token vs p1 (| accept): p-value {chi2_pvalue(second[both], p[1]):.3g}  ({both.sum()} samples)")
        measured = [both.mean(), (accepted[both] == 2).mean()]
        for i, (m, t) in enumerate(zip(measured, theory)):
            print(f"  acceptance at position {i}:   measured {m:.4f}  theory 1-TV {t:.4f}")


if __name__ == "__main__":
    main()
