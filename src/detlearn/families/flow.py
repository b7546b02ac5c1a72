"""The flow family: a conditional density p(target | context), the fast-simulation surrogate.

Its generic evaluation compares the surrogate with the held-out test split of the data it was
trained on: the mean negative log-likelihood of the test rows, and per target the W1 and KS
distances of model samples from the test data, each beside the same distance between two
disjoint halves of the test split (the data-vs-data floor).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from detlearn.errors import DetlearnError
from detlearn.evaluation.metrics import Score, ks_statistic, wasserstein1
from detlearn.export.flow import export_flow
from detlearn.families.base import Family
from detlearn.plots.compare import plot_hist_compare
from detlearn.report import Section
from detlearn.runs.surrogate import ContextRangeWarning, Surrogate, flow_sizes, train_flow

__all__ = ["FLOW", "evaluate_flow"]


def evaluate_flow(run_dir: Path, out_dir: Path, seed: int = 0) -> Section:
    """The flow's generic metrics on the test split of its own data (module docstring).

    Up to ``evaluation.max_rows`` test rows are used: the model is sampled once at the
    contexts of one half (B) and compared with the other half (A); B against A is the floor.
    With a weight column the NLL, W1 and KS are weighted (signed weights with their sign, a
    model sample weighing as the row it was drawn for; rows of weight 0 left out); the
    histograms show the rows unweighted.
    """
    surrogate = Surrogate.load(run_dir)
    info = surrogate.info
    weight = info.weight_column()
    names = [*info.context_names, *info.target_names, *([weight] if weight else [])]
    test = info.load_split(names, "test", max_rows=info.config.evaluation.max_rows)
    w = test[weight].astype(np.float64) if weight else np.ones(len(test[names[0]]))
    # Rows of weight 0 were not trained on (klm-timing's rows of events without photons).
    keep = w != 0
    test, w = {k: v[keep] for k, v in test.items()}, w[keep]
    n = len(w)
    if n < 4:
        raise DetlearnError(f"{info.dataset}: the test split has {n} rows; prepare more events")
    c = np.stack([test[k] for k in info.context_names], 1).astype(np.float64)
    x = np.stack([test[k] for k in info.target_names], 1).astype(np.float64)
    half = n // 2
    order = np.random.default_rng(seed).permutation(n)
    a, b = order[:half], order[half : 2 * half]
    # Each model sample stands for the test row whose context it was drawn at: its weight.
    wa, wb = (w[a], w[b]) if weight else (None, None)
    with warnings.catch_warnings():
        # Test contexts lie in the training range up to the split's sampling; not news here.
        warnings.simplefilter("ignore", ContextRangeWarning)
        nll = -surrogate.log_prob(x, c)
        model = surrogate.sample(c[b], 1, seed=seed)[:, 0, :]
    metrics: dict[str, float | Score] = {
        "test_nll": float(np.sum(w * nll) / np.sum(w)),
        "test_rows": float(n),
    }
    figures = []
    for j, column in enumerate(info.target):
        unit = column.unit or ""
        data_a, data_b = x[a, j], x[b, j]
        metrics[f"w1_{column.name}"] = Score(
            "w1",
            wasserstein1(data_a, model[:, j], wa, wb),
            wasserstein1(data_a, data_b, wa, wb),
            unit,
        )
        metrics[f"ks_{column.name}"] = Score(
            "ks", ks_statistic(data_a, model[:, j], wa, wb), ks_statistic(data_a, data_b, wa, wb)
        )
        path = out_dir / "figures" / f"marginal_{column.name}.png"
        label = f"{column.name} [{unit}]" if unit else column.name
        figures.append(
            (
                f"{column.name}: test data vs model samples at the test contexts",
                plot_hist_compare(data_a, model[:, j], ("test data", "model"), path, xlabel=label),
            )
        )
    return Section(
        "Generic flow metrics on the run's own test split (baseline: two halves of the test split)",
        metrics,
        figures=figures,
    )


FLOW = Family(
    name="flow",
    summary="conditional normalizing flow p(target | context): a fast-simulation surrogate",
    train=train_flow,
    load=Surrogate.load,
    export=export_flow,
    evaluate=evaluate_flow,
    sizes=flow_sizes,
    balances_labels=True,
)
