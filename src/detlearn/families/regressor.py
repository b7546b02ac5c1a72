"""The regressor family: one target from its inputs (a calibrated energy, say).

Its generic evaluation scores the predictions on the held-out test split of the run's own data:
RMSE and bias overall, and the trimmed bias and spread of (prediction − target) in quantile bins
of the target.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from detlearn.errors import DetlearnError
from detlearn.evaluation.metrics import weighted_quantile
from detlearn.evaluation.regression import bin_stats
from detlearn.export.regressor import export_regressor
from detlearn.families.base import Family
from detlearn.plots.compare import plot_hist_compare
from detlearn.report import Section
from detlearn.runs.regression import Regression, regressor_sizes, train_regressor

__all__ = ["REGRESSOR", "evaluate_regressor"]

#: Quantile bins of the target in the generic evaluation.
BINS = 5


def evaluate_regressor(run_dir: Path, out_dir: Path, seed: int = 0) -> Section:
    """The regressor's generic metrics on the test split of its own data (module docstring);
    ``seed`` is unused (nothing is drawn). With a weight column every number is weighted
    (signed weights with their sign; rows of weight 0 left out); the histogram is not."""
    reg = Regression.load(run_dir)
    info = reg.info
    target = reg.target_name
    weight = info.weight_column()
    test = info.load_split(
        [*reg.input_names, target, *([weight] if weight else [])],
        "test",
        max_rows=info.config.evaluation.max_rows,
    )
    if weight:
        keep = test[weight] != 0  # not trained on
        test = {k: v[keep] for k, v in test.items()}
    y = test[target].astype(np.float64)
    if len(y) < 2 * BINS:
        raise DetlearnError(f"{info.dataset}: the test split has {len(y)} rows; prepare more")
    w = test[weight].astype(np.float64) if weight else None
    pred = reg.predict(test).astype(np.float64)
    unit = info.target[0].unit or ""
    residual = pred - y
    mean_square, bias = _weighted_mean(residual**2, w), _weighted_mean(residual, w)
    levels = np.linspace(0, 1, BINS + 1)
    edges = np.quantile(y, levels) if w is None else weighted_quantile(y, levels, w)
    edges[0], edges[-1] = y.min(), y.max()
    index = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, BINS - 1)
    rows = []
    for k in range(BINS):
        sel = index == k
        ws = None if w is None else w[sel]
        centre = _weighted_mean(y[sel], ws)
        scorable = sel.sum() >= 2 and (ws is None or ws.sum() > 0)
        stats = bin_stats(pred[sel], y[sel], centre, weights=ws) if scorable else {}
        rows.append(
            {
                f"{target} bin [{unit}]": f"[{edges[k]:.4g}, {edges[k + 1]:.4g}]",
                "n": int(sel.sum()),
                f"mean {target}": centre,
                "bias (trimmed)": stats.get("mu"),
                "spread (trimmed)": stats.get("sigma"),
            }
        )
    path = out_dir / "figures" / f"prediction_{target}.png"
    label = f"{target} [{unit}]" if unit else target
    return Section(
        "Generic regressor metrics on the run's own test split",
        {
            "test_rmse": math.sqrt(mean_square) if mean_square >= 0 else math.nan,
            "test_bias": bias,
            "test_rows": float(len(y)),
        },
        tables=[(f"prediction − {target} in quantile bins of {target} (2–98 % trimmed)", rows)],
        figures=[
            (
                f"{target}: test targets and predictions",
                plot_hist_compare(y, pred, ("test target", "prediction"), path, xlabel=label),
            )
        ],
    )


def _weighted_mean(x: np.ndarray, w: np.ndarray | None) -> float:
    """Σ w·x / Σ w (the plain mean without weights; NaN where the weights sum to ≤ 0)."""
    if w is None:
        return float(np.mean(x))
    total = float(np.sum(w))
    return float(np.sum(w * x) / total) if total > 0 else math.nan


REGRESSOR = Family(
    name="regressor",
    summary="dense regressor of one target from its inputs",
    train=train_regressor,
    load=Regression.load,
    export=export_regressor,
    evaluate=evaluate_regressor,
    sizes=regressor_sizes,
)
