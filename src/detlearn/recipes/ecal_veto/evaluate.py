"""Validation of an ECal-veto classifier per A′ mass, trained and held-out masses apart.

On the test split: for every signal mass, that mass's signal events against all background
events (a mass-parameterized model scores the background at that mass hypothesis), the AUC with
its bootstrap interval and the signal efficiency at background efficiencies 1e-2, 1e-3 and
1e-4 where the test set resolves them. Masses the run held out of training (``split.holdout``)
are marked, and their mean efficiency is reported beside the trained masses'. A gallery shows
the most confidently misclassified events: the image the network saw (or the hits' x–z view)
beside the hits.

Example:
    >>> evaluate("runs/ecal-cnn", "reports/ecal-cnn")   # doctest: +SKIP
    PosixPath('reports/ecal-cnn/report.html')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from detlearn.config import merge_options
from detlearn.errors import DetlearnError
from detlearn.evaluation.classification import roc_curve, summarize
from detlearn.plots.classification import plot_roc
from detlearn.plots.style import exp_label, save, styled
from detlearn.report import Section, write_report
from detlearn.runs.classification import Classifier, background_masses, network_inputs

__all__ = ["EFF_B", "OPTIONS", "REFERENCE_EFF_B", "evaluate", "mean_efficiency"]

#: Defaults of ``evaluation.options``.
OPTIONS: dict[str, Any] = {"gallery": 4}
#: The background efficiencies of the working points.
EFF_B = (1e-2, 1e-3, 1e-4)
#: The working point the summary compares models at (its 68 % bootstrap interval is kept).
REFERENCE_EFF_B = 1e-3


def _per_mass(
    clf: Classifier, test: dict[str, Any], label: np.ndarray, seed: int
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    held = {float(p[0]) for p in ((clf.info.holdout or {}).get("points") or [])}
    background = label < 0.5
    bkg_events = {h: test[h][background] for h in clf.config.hits}
    fixed = None if clf.config.mass_parameterized else clf.predict(bkg_events)
    rows, curves = [], {}
    masses = np.unique(test["mass"][~background])
    for m in masses:
        sel = ~background & (test["mass"] == m)
        hypothesis = float(m) if clf.config.mass_parameterized else None
        sig = clf.predict({h: test[h][sel] for h in clf.config.hits}, hypothesis)
        bkg = fixed if fixed is not None else clf.predict(bkg_events, hypothesis)
        scores = np.concatenate([sig, bkg])
        labels = np.concatenate([np.ones(len(sig)), np.zeros(len(bkg))])
        summary = summarize(scores, labels, targets=EFF_B, seed=seed)
        roc = roc_curve(scores, labels)
        curves[f"{m:g} MeV"] = (roc.eff_s, roc.eff_b)
        row: dict[str, Any] = {
            "mass [MeV]": float(m),
            "in training": float(m) not in held,
            "signal events": summary["n_signal"],
            "AUC": summary["auc"],
        }
        for wp in summary["working_points"]:
            row[f"ε_S at ε_B={wp['eff_b_target']:g}"] = wp["eff_s"]
            if wp["eff_b_target"] == REFERENCE_EFF_B:
                row["ε_S lo"], row["ε_S hi"] = wp["eff_s_lo"], wp["eff_s_hi"]
        rows.append(row)
    return rows, curves


def mean_efficiency(rows: list[dict[str, Any]], trained: bool | None = None) -> dict[str, Any]:
    """The mean over masses of ε_S at ε_B = 1e-3, with the mean of the masses' bootstrap
    half-widths as its error (the masses share one background sample, so their errors are
    taken as fully correlated); ``trained`` keeps the trained (True) or held-out (False) masses.
    None where a mass's working point is not resolved."""
    eff = f"ε_S at ε_B={REFERENCE_EFF_B:g}"
    chosen = [r for r in rows if trained is None or r["in training"] == trained]
    if not chosen or any(r[eff] is None for r in chosen):
        return {"value": None, "error": None}
    errors = [(r["ε_S hi"] - r["ε_S lo"]) / 2 for r in chosen]
    return {"value": float(np.mean([r[eff] for r in chosen])), "error": float(np.mean(errors))}


@styled
def _gallery(
    events: dict[str, Any], images: np.ndarray | None, titles: list[str], path: Path
) -> Path:
    n = len(titles)
    fig = Figure(figsize=(7.0, 3.2 * max(n, 1)), layout="constrained")
    axes = fig.subplots(max(n, 1), 2, squeeze=False)
    for i, title in enumerate(titles):
        left, right = axes[i]
        if images is not None:
            left.imshow(images[i].sum(axis=0), origin="lower", cmap="viridis")
            left.set_title(f"{title}: image (channels summed)", fontsize=10)
        right.scatter(
            events["z"][i], events["x"][i], s=4 + 20 * np.sqrt(np.asarray(events["E"][i]))
        )
        right.set_xlabel("z [mm]")
        right.set_ylabel("x [mm]")
        right.set_title(f"{title}: hits", fontsize=10)
    exp_label(axes[0][1])
    return save(fig, path)


def evaluate(
    run_dir: str | Path, out_dir: str | Path, sections: Sequence[Section] = (), seed: int = 0
) -> Path:
    """Score the classifier in ``run_dir`` per A′ mass; returns the report path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    clf = Classifier.load(run_dir, recipe="ecal-veto")
    config = clf.info.config
    options = merge_options(OPTIONS, config.evaluation.options, "evaluation.options")
    label_name = clf.info.target_names[0]
    test = clf.info.load_split(
        [*clf.config.hits, label_name, clf.config.mass_column],
        "test",
        max_rows=config.evaluation.max_rows,
    )
    test["mass"] = test.pop(clf.config.mass_column)
    label = test[label_name].astype(np.float64)
    if not ((label == 1).any() and (label == 0).any()):
        raise DetlearnError(f"{clf.info.dataset}: the test split needs signal and background")
    rows, curves = _per_mass(clf, test, label, seed)
    figures_dir = out_dir / "figures"
    figures = [
        (
            "ROC per A′ mass (signal of that mass vs all background)",
            plot_roc(curves, figures_dir / "roc_per_mass.png"),
        )
    ]

    mass = test["mass"]
    if clf.config.mass_parameterized:
        rng = np.random.default_rng(seed)
        mass = background_masses(label, mass, np.asarray(clf.signal_masses), rng)
    score = clf.predict(
        {h: test[h] for h in clf.config.hits}, mass if clf.config.mass_parameterized else None
    )
    k = int(options["gallery"])
    worst = [*np.argsort(-score[label < 0.5])[:k], *np.argsort(score[label > 0.5])[:k]]
    index = np.concatenate(
        [np.flatnonzero(label < 0.5)[worst[:k]], np.flatnonzero(label > 0.5)[worst[k:]]]
    )
    picked = {h: test[h][index] for h in clf.config.hits}
    images = network_inputs(clf.config, picked)["images"] if clf.config.arch == "cnn" else None
    titles = [f"background P={score[i]:.3g}" for i in index[:k]] + [
        f"signal {mass[i]:g} MeV P={score[i]:.3g}" for i in index[k:]
    ]
    figures.append(
        (
            "most confidently misclassified events",
            _gallery(picked, images, titles, figures_dir / "gallery.png"),
        )
    )

    metrics = {
        "mean_eff_s_at_1e-3": mean_efficiency(rows),
        "mean_eff_s_at_1e-3_trained_masses": mean_efficiency(rows, trained=True),
        "mean_eff_s_at_1e-3_heldout_masses": mean_efficiency(rows, trained=False),
        "masses": len(rows),
    }
    variant = " (mass-parameterized)" if clf.config.mass_parameterized else ""
    return write_report(
        out_dir,
        f"ECal veto: {clf.config.arch}{variant}",
        metrics,
        tables=[("per A′ mass (— where the test set cannot resolve ε_B)", rows)],
        figures=figures,
        sections=sections,
    )
