"""Statistical checks that a sampler follows a distribution (used by tests, notebook 03 and reports)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chisquare

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
