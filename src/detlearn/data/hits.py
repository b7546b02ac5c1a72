"""A batch of events' hits, as every per-hit computation takes them: ``counts [N]`` and flat
per-hit arrays of length ``counts.sum()`` (event i owns hits ``offsets[i]:offsets[i + 1]``),
the layout of an awkward list column flattened.

Example:
    >>> hit_offsets(np.array([2, 0, 1]), "example").tolist()
    [0, 2, 2, 3]
"""

from __future__ import annotations

import numpy as np

from detlearn.errors import DetlearnError

__all__ = ["hit_column", "hit_offsets"]


def hit_offsets(counts: np.ndarray, where: str) -> np.ndarray:
    """The offsets [N + 1] of the events' hits; ``where`` names the caller in errors."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
        raise DetlearnError(
            f"{where}: counts must be a 1-D integer array (got {counts.dtype}, "
            f"shape {counts.shape})"
        )
    if counts.size and counts.min() < 0:
        raise DetlearnError(f"{where}: counts must be >= 0")
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def hit_column(
    values: np.ndarray, offsets: np.ndarray, name: str, where: str, dtype: type = np.float64
) -> np.ndarray:
    """One per-hit column as a contiguous 1-D ``dtype`` array of ``offsets[-1]`` values."""
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != offsets[-1]:
        raise DetlearnError(
            f"{where}: '{name}' must be 1-D with counts.sum() = {offsets[-1]} values "
            f"(got shape {values.shape})"
        )
    return np.ascontiguousarray(values, dtype=dtype)
