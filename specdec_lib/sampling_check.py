"""Print the statistical evidence that speculative sampling is lossless: `python -m specdec_lib.sampling_check`."""

from __future__ import annotations

from .sampling import acceptance_probability, rejection_verify
from .stats import chi2_pvalue
from .testing import TOY_SAMPLES, buggy_argmax_verify, buggy_resample_from_p, run_toy_verifier, toy_distributions

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
