"""Held-out context points: rows at chosen grid points kept out of training (interpolation tests).

A model trained on a grid of conditions (generated masses, beam energies, ...) is validated by
leaving some grid points out of training and validation and comparing the model there with an
independent sample. :func:`resolve_points` turns a :class:`~detlearn.config.HoldoutConfig` into
the list of points (explicit, or the grid's interior checkerboard), :func:`holdout_mask` finds
the rows at those points. :func:`sparse_labels` finds the grid points with too few rows to be
trained on (``split.min_label_rows``).

Example:
    >>> values = np.array([[x, y] for x in range(4) for y in range(4)], dtype=float)
    >>> checkerboard(values, ["a", "b"]).tolist()
    [[1.0, 1.0], [2.0, 2.0]]
    >>> int(holdout_mask(values, np.array([[1.0, 1.0]])).sum())
    1
"""

from __future__ import annotations

import numpy as np

from detlearn.config import HoldoutConfig
from detlearn.errors import DetlearnError

__all__ = ["MAX_GRID_VALUES", "checkerboard", "holdout_mask", "resolve_points", "sparse_labels"]

#: More distinct values than this in one column is a continuous variable, not a grid axis.
MAX_GRID_VALUES = 1000


def _grid_axis(column: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``column`` (merged within ``rtol``) and each row's index into them."""
    u = np.unique(column)
    # Values that differ by float rounding only (e.g. 0.25 + 3 * 0.975) are one grid value.
    keep = np.concatenate([[True], np.diff(u) > rtol * np.abs(u[1:])])
    axis = u[keep]
    return axis, np.searchsorted(axis, column, side="right") - 1


def checkerboard(values: np.ndarray, names: list[str], rtol: float = 1e-6) -> np.ndarray:
    """The interior checkerboard of the grid spanned by the rows of ``values`` [N, K].

    Each column's distinct values index a grid axis (0 … n−1). A point present in the rows is
    returned when every index is interior (0 < i < n − 1) and the index sum is even: every
    returned point then has its grid neighbours (odd sum, or on the edge) left in training.
    For a 10 × 10 grid that is 32 points, for 4 × 4 the two points (1, 1) and (2, 2).

    Returns:
        The points [P, K], sorted, in the units of ``values``.

    Raises:
        DetlearnError: a column with more than :data:`MAX_GRID_VALUES` distinct values (not a
            grid), or a grid without interior points.
    """
    values = np.asarray(values, dtype=np.float64)
    axes, index = [], []
    for j, name in enumerate(names):
        axis, idx = _grid_axis(values[:, j], rtol)
        if len(axis) > MAX_GRID_VALUES:
            raise DetlearnError(
                f"holdout checkerboard: column '{name}' has {len(axis)} distinct values, "
                "not a grid; list split.holdout.points instead"
            )
        axes.append(axis)
        index.append(idx)
    idx = np.stack(index, axis=1)
    sizes = np.array([len(a) for a in axes])
    chosen = np.all((idx > 0) & (idx < sizes - 1), axis=1) & (idx.sum(axis=1) % 2 == 0)
    if not chosen.any():
        shape = " x ".join(str(n) for n in sizes)
        raise DetlearnError(
            f"holdout checkerboard: the {shape} grid of {names} has no interior point to hold out"
        )
    cells = np.unique(idx[chosen], axis=0)
    return np.stack([axes[j][cells[:, j]] for j in range(len(names))], axis=1)


def holdout_mask(values: np.ndarray, points: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """Boolean [N]: row i of ``values`` [N, K] equals one of ``points`` [P, K] within ``rtol``."""
    values = np.asarray(values, dtype=np.float64)
    mask = np.zeros(len(values), dtype=bool)
    # One point at a time: [N, P, K] at once would be large for millions of rows.
    for point in np.asarray(points, dtype=np.float64).reshape(-1, values.shape[1]):
        mask |= np.all(np.abs(values - point) <= rtol * np.abs(point), axis=1)
    return mask


def resolve_points(spec: HoldoutConfig, values: np.ndarray) -> np.ndarray:
    """The held-out points [P, K] of ``spec``, over rows ``values`` [N, K] of its columns."""
    if spec.points == "checkerboard":
        return checkerboard(values, spec.columns, spec.rtol)
    return np.asarray(spec.points, dtype=np.float64).reshape(-1, len(spec.columns))


def sparse_labels(
    values: np.ndarray, min_rows: int, rtol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """The labels (distinct rows of ``values`` [N, K], each column's values merged within
    ``rtol``) that occur in fewer than ``min_rows`` rows.

    Returns:
        ``(labels, rows)``: the sparse labels [L, K], sorted, and the rows of each [L].

    Example:
        >>> values = np.array([[1.0, 2.0]] * 3 + [[1.0, 3.0]] * 2 + [[2.0, 2.0]])
        >>> labels, rows = sparse_labels(values, 3)
        >>> labels.tolist(), rows.tolist()
        ([[1.0, 3.0], [2.0, 2.0]], [2, 1])
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    axes, index = zip(
        *(_grid_axis(values[:, j], rtol) for j in range(values.shape[1])), strict=True
    )
    cells, rows = np.unique(np.stack(index, axis=1), axis=0, return_counts=True)
    few = rows < min_rows
    labels = np.stack([axes[j][cells[few, j]] for j in range(values.shape[1])], axis=1)
    return labels, rows[few]
