"""Plots: the house style, shared comparison figures and loss curves (matplotlib + mplhep).

- :mod:`.style`: the HEP style and the pieces every figure is built from;
- :mod:`.compare`: model vs simulation per context bin, metrics per bin, PIT, histograms;
- :mod:`.loss`: train and validation loss per epoch.
"""

from __future__ import annotations

from detlearn.plots.compare import (
    plot_binned_overlays,
    plot_hist_compare,
    plot_metric_vs_bin,
    plot_pit,
)
from detlearn.plots.loss import plot_loss

__all__ = [
    "plot_binned_overlays",
    "plot_hist_compare",
    "plot_loss",
    "plot_metric_vs_bin",
    "plot_pit",
]
