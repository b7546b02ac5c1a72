"""The classifier family: P(signal) of an event from its calorimeter hits (the ECal veto).

Its generic evaluation scores the classifier on the held-out test split of the run's own data:
ROC with log background efficiency, AUC with a bootstrap interval, working points at the
minimum misclassification and at fixed background efficiencies (where the test set can resolve
them), and the score distributions. A mass-parameterized model is scored with every background
event at a mass drawn from the training signal masses, as it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detlearn.errors import DetlearnError
from detlearn.evaluation.classification import roc_curve, summarize
from detlearn.export.classifier import export_classifier
from detlearn.families.base import Family
from detlearn.io.dataset import Dataset
from detlearn.plots.classification import plot_roc, plot_scores
from detlearn.report import Section
from detlearn.runs.classification import (
    Classifier,
    background_masses,
    classifier_sizes,
    train_classifier,
)

__all__ = ["CLASSIFIER", "evaluate_classifier", "scored_test_split"]


def scored_test_split(
    clf: Classifier, seed: int = 0, max_rows: int | None = None
) -> dict[str, np.ndarray]:
    """P(signal), label and weight (ones without a weight column) of the run's test split;
    background events of a mass-parameterized model are scored at a mass drawn from the
    training signal masses."""
    info, cfg = clf.info, clf.config
    label = info.target_names[0]
    ds = Dataset.open(info.dataset)
    extra = [c for c in (cfg.mass_column, *ds.names("weight")[:1]) if c in ds.columns]
    test = info.load_split([*cfg.hits, label, *extra], "test", max_rows=max_rows)
    y = test[label].astype(np.float64)
    if not ((y == 1).any() and (y == 0).any()):
        raise DetlearnError(f"{info.dataset}: the test split needs signal and background events")
    mass = None
    if cfg.mass_parameterized:
        rng = np.random.default_rng(seed)
        mass = background_masses(y, test[cfg.mass_column], np.asarray(clf.signal_masses), rng)
    weights = ds.names("weight")
    return {
        "score": clf.predict(test, mass),
        "label": y,
        "weight": test[weights[0]].astype(np.float64) if weights else np.ones_like(y),
    }


def evaluate_classifier(run_dir: Path, out_dir: Path, seed: int = 0) -> Section:
    """The classifier's generic metrics on the test split of its own data (module docstring)."""
    clf = Classifier.load(run_dir)
    scored = scored_test_split(clf, seed, clf.info.config.evaluation.max_rows)
    score, label, weight = scored["score"], scored["label"], scored["weight"]
    summary = summarize(score, label, weight, seed=seed)
    roc = roc_curve(score, label, weight)
    figures = out_dir / "figures"
    rows = [
        {
            "ε_B target": wp["eff_b_target"],
            "ε_S": wp["eff_s"],
            "ε_S interval": (
                f"[{wp['eff_s_lo']:.4g}, {wp['eff_s_hi']:.4g}]"
                if wp.get("eff_s_lo") is not None
                else "—"
            ),
            "rejection 1/ε_B": wp["rejection"],
            "purity": wp["purity"],
            "note": wp["note"],
        }
        for wp in [summary["min_misclassification"], *summary["working_points"]]
    ]
    metrics: dict[str, Any] = {
        "auc": {"value": summary["auc"], "error": (summary["auc_hi"] - summary["auc_lo"]) / 2},
        "test_signal_events": summary["n_signal"],
        "test_background_events": summary["n_background"],
    }
    for wp in summary["working_points"]:
        metrics[f"eff_s_at_eff_b_{wp['eff_b_target']:g}"] = {
            "value": wp["eff_s"],
            "error": (wp["eff_s_hi"] - wp["eff_s_lo"]) / 2 if wp["resolved"] else None,
        }
    return Section(
        f"Generic classifier metrics on the run's own test split ({clf.config.arch})",
        metrics,
        tables=[("working points (min. misclassification, then fixed ε_B)", rows)],
        figures=[
            ("ROC", plot_roc({clf.config.arch: (roc.eff_s, roc.eff_b)}, figures / "roc.png")),
            (
                "P(signal) of signal and background",
                plot_scores(score, label, figures / "scores.png"),
            ),
        ],
    )


CLASSIFIER = Family(
    name="classifier",
    summary="signal/background classifier of calorimeter hits: CNN, point cloud, or BDT",
    train=train_classifier,
    load=Classifier.load,
    export=export_classifier,
    evaluate=evaluate_classifier,
    sizes=classifier_sizes,
    roles=("label",),
)
