"""Classifier figures: ROC curves with background efficiency on a log scale, score distributions.

Example:
    >>> plot_roc({"cnn": (eff_s, eff_b)}, "roc.png")          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detlearn.plots.style import exp_label, save, styled

__all__ = ["plot_roc", "plot_scores"]


@styled
def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Signal efficiency against background efficiency (log x), one curve per classifier.

    ``curves``: name -> (eff_s, eff_b) arrays; points with eff_b = 0 are off the log axis.
    """
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for name, (eff_s, eff_b) in curves.items():
        shown = np.asarray(eff_b) > 0
        ax.plot(np.asarray(eff_b)[shown], np.asarray(eff_s)[shown], label=name)
    ax.set_xscale("log")
    ax.set_xlabel(r"background efficiency $\varepsilon_B$")
    ax.set_ylabel(r"signal efficiency $\varepsilon_S$")
    ax.set_ylim(0, 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    exp_label(ax)
    return save(fig, path)


@styled
def plot_scores(scores: np.ndarray, labels: np.ndarray, path: str | Path) -> Path:
    """P(signal) of signal and background events, log-log (the original study's view)."""
    fig = Figure(figsize=(6.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    edges = np.logspace(-6, 0, 61)
    clipped = np.clip(np.asarray(scores, dtype=np.float64), edges[0], 1.0)
    for value, name in ((1, "signal"), (0, "background")):
        sel = np.asarray(labels) == value
        if sel.any():
            ax.hist(clipped[sel], edges, histtype="step", density=True, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("P(signal) (below 1e-6 in the first bin)")
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center")
    exp_label(ax)
    return save(fig, path)
