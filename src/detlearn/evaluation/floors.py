"""Statistical floors: how far two samples of the same size differ by chance.

A model's error is read against the error a second simulated (or held-out) sample makes; these
give that floor from a bootstrap of the reference sample, with a z that covers many checks at
once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import stdtrit

__all__ = ["floor_z", "statistical_floor"]


def floor_z(checks: int, resamples: int, coverage: float = 0.95) -> float:
    """The floor's z: a two-sided interval covering ``checks`` checks at once with probability
    ``coverage`` (Bonferroni), each a difference over its standard deviation estimated from
    ``resamples`` bootstrap samples (Student's t, ``resamples`` − 1 degrees of freedom).

    Example:
        >>> round(floor_z(1, 20), 2), round(floor_z(64, 20), 2), round(floor_z(64, 10**6), 2)
        (2.09, 3.99, 3.36)
    """
    p = 1.0 - (1.0 - coverage) / (2 * max(checks, 1))
    return float(stdtrit(max(resamples - 1, 1), p))


def statistical_floor(
    x: np.ndarray,
    stat: Any,
    resamples: int,
    rng: np.random.Generator,
    size: int | None = None,
    z: float = 2.0,
) -> float:
    """z √2 σ_boot / |stat(x)|: the spread of the relative difference of two samples of
    ``len(x)`` (sim vs sim; z = 2: 95 %); with ``size``, z σ_boot / |stat(x)| of one sample of
    ``size`` drawn from x. σ_boot: the standard deviation of ``stat`` over ``resamples``
    bootstrap samples."""
    m = len(x) if size is None else size
    boot = [stat(x[rng.integers(0, len(x), m)]) for _ in range(resamples)]
    factor = z * math.sqrt(2.0) if size is None else z
    return factor * float(np.std(boot, ddof=1)) / abs(stat(x))
