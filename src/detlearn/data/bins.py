"""Binning rows by a context column (the bins every per-bin metric and plot uses).

Example:
    >>> [m.tolist() for m in context_bin_masks(np.array([0.0, 1.0, 2.0]), [0.0, 1.0, 2.0])]
    [[True, False, False], [False, True, True]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detlearn.errors import DetlearnError

__all__ = ["context_bin_masks"]


def context_bin_masks(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> list[np.ndarray]:
    """One boolean mask per bin ``[edges[i], edges[i+1])``; the last bin includes its right edge.

    Values outside the edges are in no bin.
    """
    values = np.asarray(values)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise DetlearnError(f"bin edges must be increasing with at least 2 entries (got {edges})")
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = edges.size - 2
    return [idx == i for i in range(edges.size - 1)]
