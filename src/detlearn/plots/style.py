"""The house plot style (mplhep's CMS style, "detlearn Simulation" label) and its pieces.

Every plot function in detlearn (core and recipes) is decorated with :func:`styled`, labels its
axes with :func:`exp_label` and writes its PNG with :func:`save`. Figures are built on
``matplotlib.figure.Figure`` directly, never through pyplot, so nothing touches the global
backend or leaks open figures, and it works headless. Comparisons show the simulation
(:data:`SIM`), the model (:data:`MODEL`) and a second simulated sample (:data:`SIM2`), the
reference for how much two simulations differ by chance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib.style
import mplhep
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec, SubplotSpec

from detlearn._files import atomic_path

__all__ = [
    "MODEL",
    "SIM",
    "SIM2",
    "STYLE",
    "compare_panel",
    "exp_label",
    "range_edges",
    "ratio",
    "ratio_axes",
    "ratio_grid",
    "save",
    "styled",
]

# CMS's house style is sized for a single 10-inch panel; grids of small panels need smaller text.
STYLE = [mplhep.styles.CMS, {"font.size": 14, "axes.labelsize": 14, "legend.fontsize": 11}]
SIM, MODEL, SIM2 = "#3f90da", "#bd1f01", "#717581"
_F = TypeVar("_F", bound=Callable[..., Any])


def styled(fn: _F) -> _F:
    """Run a plot function inside the HEP style context (rcParams restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.style.context(STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def exp_label(ax: Axes) -> None:
    """The experiment-style label above the axes: bold "detlearn", italic "Simulation"."""
    # A plain title rather than mplhep.label.exp_label: its offsets are fixed when it is called
    # and drift once a layout engine moves the axes.
    ax.set_title(r"$\bf{detlearn}$ $\it{Simulation}$", loc="left", fontsize=14)


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder created, atomically); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    return path


def ratio_grid(fig: Figure, nrows: int, ncols: int) -> GridSpec:
    """An outer grid for main+ratio cells, with margins in inches (no layout engine).

    Constrained layout would pad between a main panel and its ratio panel; fixed margins let
    the two touch.
    """
    w, h = fig.get_size_inches()
    return fig.add_gridspec(
        nrows, ncols, left=0.9 / w, right=1 - 0.2 / w, bottom=0.6 / h, top=1 - 0.45 / h,
        wspace=0.3, hspace=0.3,
    )  # fmt: skip


def ratio_axes(fig: Figure, cell: SubplotSpec) -> tuple[Axes, Axes]:
    """A main panel above a ratio panel sharing its x axis, in a gridspec cell."""
    sub = cell.subgridspec(2, 1, height_ratios=[3, 1], hspace=0.0)
    ax = fig.add_subplot(sub[0])
    rax = fig.add_subplot(sub[1], sharex=ax)
    ax.tick_params(labelbottom=False)
    return ax, rax


def ratio(
    num: np.ndarray, den: np.ndarray, n_num: float, n_den: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ratio of two normalized histograms and its error from Poisson errors on both counts.

    r = (num / n_num) / (den / n_den), σ_r = r·sqrt(1/num + 1/den); NaN where a count is 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((num > 0) & (den > 0), (num / n_num) / (den / n_den), np.nan)
        return r, r * np.sqrt(1.0 / num + 1.0 / den)


def compare_panel(
    ax: Axes,
    rax: Axes,
    edges: np.ndarray,
    samples: Sequence[np.ndarray],
    labels: Sequence[str],
    xlabel: str,
    logy: bool = False,
) -> None:
    """Normalized histograms of 2 or 3 samples (reference first) and their ratio to the first.

    Each histogram is normalized to its sample's total size (density per x unit), so entries
    outside the plotted range still count and the areas stay comparable.
    """
    widths = np.diff(edges)
    counts = [np.histogram(s, edges)[0].astype(np.float64) for s in samples]
    styles = [
        {"histtype": "fill", "color": SIM, "alpha": 0.35},
        {"histtype": "step", "color": MODEL, "linewidth": 1.8},
        {"histtype": "step", "color": SIM2, "linewidth": 0.9},
    ]
    for s, c, lab, st in zip(samples, counts, labels, styles, strict=False):
        mplhep.histplot(c / (len(s) * widths), edges, ax=ax, label=lab, **st)
    ax.set_ylabel("density")
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.3 * ax.get_ylim()[1])  # headroom for the legend
    ax.legend(loc="upper right")
    centers = 0.5 * (edges[1:] + edges[:-1])
    r, err = ratio(counts[1], counts[0], len(samples[1]), len(samples[0]))
    rax.errorbar(centers, r, yerr=err, fmt="o", ms=3, color=MODEL, elinewidth=1)
    if len(samples) > 2:
        r2, _ = ratio(counts[2], counts[0], len(samples[2]), len(samples[0]))
        rax.stairs(r2, edges, color=SIM2, linewidth=0.9)
    rax.axhline(1.0, color="black", linewidth=0.8)
    rax.set_ylim(0.5, 1.5)
    rax.set_yticks([0.75, 1.0, 1.25])  # none at the edges, where the main panel's labels sit
    rax.set_ylabel(f"/ {labels[0]}", fontsize=11)
    rax.set_xlabel(xlabel)
    rax.set_xlim(edges[0], edges[-1])


def range_edges(samples: Sequence[np.ndarray], bins: int) -> np.ndarray:
    """Equal-width edges over the central 99.8 % of the pooled samples (outliers off-plot)."""
    lo, hi = np.quantile(np.concatenate(samples), [0.001, 0.999])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)
