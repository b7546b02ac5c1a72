"""Which rows a model trains on: the train and val splits less sparse and held-out labels.

:func:`training_splits` loads a dataset's train and val splits (cut with the run's own split
fractions), checks them, drops the labels with too few rows (``split.min_label_rows``, reported
in a :class:`SparseLabelWarning`) and the held-out grid points (``split.holdout``); the records
it returns go into the run's ``run.json``. :func:`grid_labels` keeps the distinct training labels
of a grid so that a trained surrogate can tell a context outside their convex hull.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from detlearn.config import LabelRowsConfig, RunConfig
from detlearn.data.holdout import holdout_mask, resolve_points, sparse_labels
from detlearn.errors import DetlearnError, DetlearnWarning
from detlearn.io.dataset import GROUP_COLUMN, Dataset

__all__ = [
    "MAX_LABELS",
    "SparseLabelWarning",
    "drop_sparse_labels",
    "grid_labels",
    "training_splits",
]


class SparseLabelWarning(DetlearnWarning):
    """Labels left out of training for having fewer rows than ``split.min_label_rows``."""


def training_splits(
    cfg: RunConfig, ds: Dataset, columns: list[str], context: list[str]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The train and val splits of ``ds`` (``columns`` loaded), less sparse labels and
    held-out points.

    Checks that both splits have rows and finite ``context`` columns; applies
    ``split.min_label_rows``, then ``split.holdout`` (a checkerboard over the labels that
    remain). Returns the splits and the records for ``run.json``: ``sparse_labels`` and
    ``holdout`` (None where not configured).
    """
    dataset = ds.root
    spec = cfg.split.holdout
    for key, rule in (("holdout", spec), ("min_label_rows", cfg.split.min_label_rows)):
        for col in rule.columns if rule is not None else []:
            if col not in context:
                raise DetlearnError(
                    f"split.{key}: column '{col}' is not a context column of {dataset} "
                    f"(context: {', '.join(context)})"
                )
    fractions = cfg.split.model_dump(mode="json")
    splits = {s: ds.load(columns, split=s, fractions=fractions) for s in ("train", "val")}
    for name, part in splits.items():
        if len(part[GROUP_COLUMN]) == 0:
            raise DetlearnError(f"{dataset}: the '{name}' split is empty; prepare more events")
        for col in context:
            bad = int((~np.isfinite(part[col])).sum())
            if bad:
                raise DetlearnError(f"{dataset}: context column '{col}' has {bad} non-finite rows")
    records: dict[str, Any] = {"sparse_labels": None, "holdout": None}
    if cfg.split.min_label_rows is not None:
        splits, records["sparse_labels"] = drop_sparse_labels(ds, splits, cfg.split.min_label_rows)
    if spec is None:
        return splits, records
    values = {s: np.stack([part[c] for c in spec.columns], 1) for s, part in splits.items()}
    points = resolve_points(spec, np.concatenate(list(values.values())))
    held = {s: holdout_mask(v, points, spec.rtol) for s, v in values.items()}
    for point in points:
        if not any(holdout_mask(v, point, spec.rtol).any() for v in values.values()):
            raise DetlearnError(
                f"split.holdout: point {dict(zip(spec.columns, point.tolist(), strict=True))} "
                f"matches no train or val row of {dataset}"
            )
    splits = {s: {k: v[~held[s]] for k, v in part.items()} for s, part in splits.items()}
    for name, part in splits.items():
        if len(part[GROUP_COLUMN]) == 0:
            raise DetlearnError(f"split.holdout leaves the '{name}' split of {dataset} empty")
    records["holdout"] = {
        "columns": spec.columns,
        "points": points.tolist(),
        "rtol": spec.rtol,
        "rows_held_out": {s: int(h.sum()) for s, h in held.items()},
    }
    return splits, records


def drop_sparse_labels(
    ds: Dataset, splits: dict[str, dict[str, np.ndarray]], rule: LabelRowsConfig
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """``splits`` less the rows of labels with fewer than ``rule.rows`` rows in the whole
    dataset (a :class:`SparseLabelWarning` names them), and the record for ``run.json``."""
    everything = ds.load(rule.columns)
    labels, rows = sparse_labels(
        np.stack([everything[c] for c in rule.columns], 1), rule.rows, rule.rtol
    )
    record = {
        "columns": rule.columns,
        "min_rows": rule.rows,
        "labels": labels.tolist(),
        "rows": rows.tolist(),
    }
    if not len(labels):
        return splits, record
    kept = {}
    for name, part in splits.items():
        sparse = holdout_mask(np.stack([part[c] for c in rule.columns], 1), labels, rule.rtol)
        kept[name] = {k: v[~sparse] for k, v in part.items()}
        if not len(kept[name][GROUP_COLUMN]):
            raise DetlearnError(
                f"split.min_label_rows leaves the '{name}' split of {ds.root} empty: "
                f"{len(labels)} label(s) of {rule.columns} have fewer than {rule.rows} rows, "
                f"the most {rows.max()}"
            )
    shown = ", ".join(
        f"({', '.join(f'{v:g}' for v in label)}): {n}"
        for label, n in zip(labels.tolist()[:5], rows[:5].tolist(), strict=True)
    )
    more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
    warnings.warn(
        SparseLabelWarning(
            f"{ds.root}: {len(labels)} label(s) of {rule.columns} with fewer than {rule.rows} "
            f"rows left out of training (rows per label): {shown}{more}"
        ),
        stacklevel=3,
    )
    return kept, record


#: More distinct training contexts than this are a continuous context, not a grid of labels.
MAX_LABELS = 10_000


def grid_labels(cfg: RunConfig, c: np.ndarray, context: list[str]) -> list[list[float]] | None:
    """The distinct training contexts [L, C] of a grid of labels (generated masses, beam
    energies...), kept so that :meth:`~detlearn.runs.Surrogate.context_array` can tell a label
    outside their convex hull; None unless the split treats every context column as a label
    (``split.holdout`` or ``split.min_label_rows`` on all of them), there are two or more, and
    at most :data:`MAX_LABELS` distinct ones."""
    rules = [r for r in (cfg.split.holdout, cfg.split.min_label_rows) if r is not None]
    if c.shape[1] < 2 or not any(set(r.columns) == set(context) for r in rules):
        return None
    labels = np.unique(c, axis=0)
    return labels.tolist() if len(labels) <= MAX_LABELS else None
