"""Evaluation: generic two-sample and density metrics, and the suites built on them.

- ``metrics``: distances and test statistics of two samples (W1, KS, two-sample χ², energy
  distance, classifier AUC; W1, KS and quantiles also with signed event weights), density
  scores (KL from exact densities, PIT calibration), and :class:`Score`, a value beside its
  simulation-vs-simulation baseline.
- ``density``: binned validation of a conditional density p(t | c) in context bins.
- ``floors``: how far two samples of the same size differ by chance (bootstrap floors).
- ``regression``: response and resolution per bin (FACILE's definitions), σ_eff.
- ``classification``: ROC, AUC with a bootstrap interval, working points at fixed background
  efficiency (refused where the test set cannot resolve them).
- ``latency``: time per row against batch size.
"""

from __future__ import annotations

from detlearn.evaluation.density import ValidationResult, context_bin_masks, validate_conditional
from detlearn.evaluation.metrics import (
    Score,
    auc_null_sigma,
    c2st_auc,
    chi2_two_sample,
    energy_distance,
    kl_from_exact,
    ks_statistic,
    pit_uniformity,
    quantiles_rel_error,
    to_jsonable,
    wasserstein1,
    weighted_quantile,
    width68,
    with_baseline,
)

__all__ = [
    "Score",
    "ValidationResult",
    "auc_null_sigma",
    "c2st_auc",
    "chi2_two_sample",
    "context_bin_masks",
    "energy_distance",
    "kl_from_exact",
    "ks_statistic",
    "pit_uniformity",
    "quantiles_rel_error",
    "to_jsonable",
    "validate_conditional",
    "wasserstein1",
    "weighted_quantile",
    "width68",
    "with_baseline",
]
