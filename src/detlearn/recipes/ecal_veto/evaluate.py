"""Validation of an ECal-veto classifier per A′ mass, trained and held-out masses apart.

On the test split: for every signal mass, that mass's signal events against all background
events (a mass-parameterized model scores the background at that mass hypothesis), the AUC with
its bootstrap interval and the signal efficiency at background efficiencies 1e-2, 1e-3 and
1e-4 where the test set resolves them. Masses the run held out of training (``split.holdout``)
are marked, and their mean efficiency is reported beside the trained masses'. A gallery shows
the most confidently misclassified events: the image the network saw (or the hits' x–z view)
beside the hits.

The figures are those of **fiducial** events, as LDMX quotes its ECal veto: the recoil
electron's straight trajectory from the target is inside the ECal flower at its front face and
still at ``fiducial_depth`` X₀ (default 5, past the shower maximum of a ≤ 1.5 GeV electron,
t_max = ln(E/E_c) − 0.5 ≈ 4.7), so its shower develops in the ECal. The other events (the
electron leaves sideways: a few per cent of the background, up to half the signal at large
m_A′) leave the ECal empty or nearly so in both classes; no ECal-only veto can split them, and
in LDMX they go to the HCal veto. Each sample's fiducial fraction is reported. The selection
needs the truth angles ``recoilTheta`` and ``recoilPhi`` [rad] (the built-in simulator writes
them; from your own files, a recoil-tracker projection under those names does the same);
``fiducial: auto`` uses them where the dataset has them and says so where it does not,
``true`` requires them, ``false`` scores every event.

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
from detlearn.evaluation.classification import (
    mean_working_point_interval,
    roc_curve,
    summarize,
)
from detlearn.io.dataset import Dataset
from detlearn.plots.classification import plot_roc
from detlearn.plots.style import exp_label, save, styled
from detlearn.recipes.ecal_veto.geometry import contained
from detlearn.report import Section, write_report
from detlearn.runs.classification import Classifier, background_masses, network_inputs

__all__ = [
    "EFF_B",
    "OPTIONS",
    "RECOIL_ANGLES",
    "REFERENCE_EFF_B",
    "evaluate",
    "fiducial_columns",
    "mean_efficiency",
]

#: Defaults of ``evaluation.options`` (module docstring).
OPTIONS: dict[str, Any] = {"gallery": 4, "fiducial": "auto", "fiducial_depth": 5.0}
#: The truth angles of the recoil electron the fiducial selection reads [rad].
RECOIL_ANGLES = ("recoilTheta", "recoilPhi")
#: The background efficiencies of the working points.
EFF_B = (1e-2, 1e-3, 1e-4)
#: The working point the summary compares models at (its 68 % bootstrap interval is kept).
REFERENCE_EFF_B = 1e-3


def fiducial_columns(dataset: str | Path, mode: object) -> list[str]:
    """The recoil-angle columns the fiducial selection reads from ``dataset``: both, or none
    for ``fiducial: false`` and for ``auto`` on a dataset without them (``true`` without them
    is an error naming the missing columns)."""
    if mode not in ("auto", True, False):
        raise DetlearnError(
            f"evaluation.options.fiducial: expected auto, true or false, got {mode!r}"
        )
    if mode is False:
        return []
    missing = [c for c in RECOIL_ANGLES if c not in Dataset.open(dataset).columns]
    if missing and mode is True:
        raise DetlearnError(
            f"{dataset}: evaluation.options.fiducial is true but the dataset has no "
            f"{', '.join(missing)} column (the recoil electron's angles [rad]); set it to "
            "auto or false to score every event"
        )
    return [] if missing else list(RECOIL_ANGLES)


#: Per A′ mass [MeV]: (its signal's scores, the background's scores at that mass).
Scores = dict[float, tuple[np.ndarray, np.ndarray]]


def _per_mass(
    clf: Classifier, test: dict[str, Any], label: np.ndarray, seed: int
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]], Scores]:
    held = {float(p[0]) for p in ((clf.info.holdout or {}).get("points") or [])}
    background = label < 0.5
    bkg_events = {h: test[h][background] for h in clf.config.hits}
    fixed = None if clf.config.mass_parameterized else clf.predict(bkg_events)
    rows, curves, scored = [], {}, {}
    masses = np.unique(test["mass"][~background])
    for m in masses:
        sel = ~background & (test["mass"] == m)
        hypothesis = float(m) if clf.config.mass_parameterized else None
        sig = clf.predict({h: test[h][sel] for h in clf.config.hits}, hypothesis)
        bkg = fixed if fixed is not None else clf.predict(bkg_events, hypothesis)
        scored[float(m)] = (sig, bkg)
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
    return rows, curves, scored


def _fiducial_fractions(
    inside: np.ndarray, label: np.ndarray, mass: np.ndarray
) -> dict[float, float]:
    """The fiducial fraction per A′ mass [MeV], the background's under 0.0."""
    samples = {0.0: label < 0.5}
    samples |= {float(m): (label > 0.5) & (mass == m) for m in np.unique(mass[label > 0.5])}
    return {m: float(inside[sel].mean()) for m, sel in samples.items() if sel.any()}


def mean_efficiency(
    rows: list[dict[str, Any]], scored: Scores, trained: bool | None = None, seed: int = 0
) -> dict[str, Any]:
    """The mean over masses of ε_S at ε_B = 1e-3 with the half-width of its 68 % bootstrap
    interval as its error (the background resampled once for every mass, as the masses share
    it; :func:`~detlearn.evaluation.classification.mean_working_point_interval`);
    ``trained`` keeps the trained (True) or held-out (False) masses of ``rows``. None where a
    mass's working point is not resolved."""
    chosen = [r["mass [MeV]"] for r in rows if trained is None or r["in training"] == trained]
    if not chosen:
        return {"value": None, "error": None}
    value, lo, hi = mean_working_point_interval(
        [scored[m] for m in chosen], REFERENCE_EFF_B, seed=seed
    )
    if not np.isfinite(value):
        return {"value": None, "error": None}
    return {"value": value, "error": (hi - lo) / 2, "lo": lo, "hi": hi}


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
    angles = fiducial_columns(clf.info.dataset, options["fiducial"])
    test = clf.info.load_split(
        [*clf.config.hits, label_name, clf.config.mass_column, *angles],
        "test",
        max_rows=config.evaluation.max_rows,
    )
    test["mass"] = test.pop(clf.config.mass_column)
    label = test[label_name].astype(np.float64)
    if not ((label == 1).any() and (label == 0).any()):
        raise DetlearnError(f"{clf.info.dataset}: the test split needs signal and background")
    fiducial = {}
    if angles:
        inside = contained(*(test.pop(c) for c in angles), float(options["fiducial_depth"]))
        fiducial = _fiducial_fractions(inside, label, test["mass"])
        test = {k: v[inside] for k, v in test.items()}
        label = label[inside]
        if not ((label == 1).any() and (label == 0).any()):
            raise DetlearnError(
                f"{clf.info.dataset}: no fiducial signal or background events in the test "
                "split; set evaluation.options.fiducial: false to score every event"
            )
    rows, curves, scored = _per_mass(clf, test, label, seed)
    for row in rows:
        row["fiducial fraction"] = fiducial.get(row["mass [MeV]"])
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
        "mean_eff_s_at_1e-3": mean_efficiency(rows, scored, seed=seed),
        "mean_eff_s_at_1e-3_trained_masses": mean_efficiency(rows, scored, True, seed),
        "mean_eff_s_at_1e-3_heldout_masses": mean_efficiency(rows, scored, False, seed),
        "masses": len(rows),
        "fiducial": {
            "used": bool(angles),
            "depth_x0": float(options["fiducial_depth"]) if angles else None,
            "background_fraction": fiducial.get(0.0),
        },
    }
    variant = " (mass-parameterized)" if clf.config.mass_parameterized else ""
    scope = (
        f"fiducial events (the recoil electron inside the ECal from its front to "
        f"{options['fiducial_depth']:g} X₀; background: {fiducial[0.0]:.1%} of the test split)"
        if angles
        else "every event (no recoil-electron angles in the dataset: no fiducial selection)"
    )
    return write_report(
        out_dir,
        f"ECal veto: {clf.config.arch}{variant}",
        metrics,
        tables=[(f"per A′ mass, {scope} (— where the test set cannot resolve ε_B)", rows)],
        figures=figures,
        sections=sections,
    )
