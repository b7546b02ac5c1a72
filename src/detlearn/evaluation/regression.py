"""Regression quality per bin: response and resolution (FACILE's definitions), σ_eff.

Example:
    >>> e_gen = np.full(1000, 10.0); e = e_gen + np.random.default_rng(0).normal(0, 1, 1000)
    >>> round(bin_stats(e, e_gen, 10.0)["response"], 2)
    1.0
"""

from __future__ import annotations

import numpy as np

from detlearn.evaluation.metrics import weighted_quantile

__all__ = ["TRIM", "bin_stats", "sigma_eff"]

#: The quantiles of ΔE kept by :func:`bin_stats` (FACILE's 2–98 %).
TRIM = (0.02, 0.98)


def sigma_eff(ratio: np.ndarray, coverage: float = 0.683) -> float:
    """Half the width of the narrowest interval holding ``coverage`` of ``ratio`` (unitless)."""
    x = np.sort(np.asarray(ratio, dtype=np.float64))
    k = int(np.ceil(coverage * len(x)))
    if k < 2:
        return float("nan")
    widths = x[k - 1 :] - x[: len(x) - k + 1]
    return float(0.5 * widths.min())


def bin_stats(
    e: np.ndarray,
    e_gen: np.ndarray,
    e_ref: float,
    trim: tuple[float, float] = TRIM,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """FACILE's per-bin numbers of one method: trimmed μ, σ [GeV], response, resolution.

    ΔE = E − E_gen, trimmed to its ``trim`` quantiles; μ and σ are the trimmed mean and standard
    deviation; response = 1 − μ/E_ref; c = 1 − μ/E_ref, inverted when below 1 (so c ≥ 1);
    resolution = σ/E_ref · c with statistical error resolution/√(2n); and σ_eff of E/E_gen.

    Args:
        e: reconstructed energies [GeV] of the bin's channels.
        e_gen: their generated energies [GeV].
        e_ref: the bin's energy scale, e.g. the pT bin centre [GeV].
        trim: the quantiles of ΔE kept.
        weights: signed event weights: the trim quantiles (:func:`weighted_quantile`), μ and σ
            are weighted (NaN where the kept weights sum to ≤ 0); σ_eff and the error's n
            stay counts of rows.
    """
    de, deposit = e - e_gen, e_gen > 0
    if weights is None:
        lo, hi = np.quantile(de, trim)
        inside = (de >= lo) & (de <= hi)
        kept = de[inside]
        mu, sigma = float(kept.mean()), float(kept.std())
    else:
        w = np.asarray(weights, dtype=np.float64)
        lo, hi = weighted_quantile(de, trim, w)
        inside = (de >= lo) & (de <= hi)
        kept, wk = de[inside], w[inside]
        total = wk.sum()
        mu = float(np.sum(wk * kept) / total) if total > 0 else float("nan")
        var = float(np.sum(wk * (kept - mu) ** 2) / total) if total > 0 else float("nan")
        sigma = float(np.sqrt(var)) if var >= 0 else float("nan")
    response = 1.0 - mu / e_ref
    # c >= 1; a response <= 0 (mean off by more than E_ref) has no meaningful correction.
    c = max(response, 1.0 / response) if response > 0 else float("nan")
    resolution = sigma / e_ref * c
    return {
        "mu": mu,
        "sigma": sigma,
        "response": response,
        "resolution": resolution,
        "resolution_err": resolution / np.sqrt(2 * len(kept)),
        # E/E_gen of rows with a true deposit.
        "sigma_eff": sigma_eff(e[deposit] / e_gen[deposit]),
    }
