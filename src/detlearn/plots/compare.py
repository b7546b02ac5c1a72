"""Shared comparison figures: model vs simulation in context bins, metrics per bin, PIT.

Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mplhep
import numpy as np
from matplotlib.figure import Figure

from detlearn.data.bins import context_bin_masks
from detlearn.errors import DetlearnError
from detlearn.plots.style import (
    MODEL,
    SIM2,
    compare_panel,
    exp_label,
    range_edges,
    ratio_axes,
    ratio_grid,
    save,
    styled,
)

__all__ = ["plot_binned_overlays", "plot_hist_compare", "plot_metric_vs_bin", "plot_pit"]


@styled
def plot_binned_overlays(
    target_sim: np.ndarray,
    context_sim: np.ndarray,
    target_model: np.ndarray,
    target_sim2: np.ndarray,
    context_names: Sequence[str],
    bins: Mapping[str, Sequence[float] | np.ndarray],
    out_dir: str | Path,
    *,
    unit: str = "ns",
    target_label: str = r"$\Delta t$",
    hist_bins: int = 40,
    ncols: int = 4,
) -> list[Path]:
    """Overlays of sim, model and sim2 in each context bin, one PNG per context variable.

    The arrays are those of :func:`~detlearn.evaluation.density.validate_conditional`. Each
    panel shows normalized histograms (sim filled, model as a thick line, sim2 as a thin line)
    and a ratio panel: model / sim with Poisson error bars, sim2 / sim as a thin line.

    Returns:
        The paths ``out_dir/overlay_<variable>.png``, in the order of ``bins``.
    """
    out_dir = Path(out_dir)
    sim = np.asarray(target_sim, dtype=np.float64).ravel()
    ctx = np.asarray(context_sim, dtype=np.float64).reshape(sim.size, -1)
    model = np.asarray(target_model, dtype=np.float64).ravel()
    sim2 = np.asarray(target_sim2, dtype=np.float64).ravel()
    xlabel = f"{target_label} [{unit}]" if unit else target_label
    paths = []
    for name, edges in bins.items():
        if name not in context_names:
            raise DetlearnError(f"plot_binned_overlays: no context named '{name}'")
        col = ctx[:, list(context_names).index(name)]
        masks = context_bin_masks(col, edges)
        nrows = math.ceil(len(masks) / ncols)
        cols = min(ncols, len(masks))
        fig = Figure(figsize=(4.6 * cols, 4.8 * nrows))
        grid = ratio_grid(fig, nrows, cols)
        for i, mask in enumerate(masks):
            ax, rax = ratio_axes(fig, grid[i // cols, i % cols])
            if i == 0:
                exp_label(ax)
            title = rf"{name} $\in$ [{edges[i]:.3g}, {edges[i + 1]:.3g}]"
            ax.set_title(title, loc="right", fontsize=11)
            if mask.sum() == 0:
                continue
            s = (sim[mask], model[mask], sim2[mask])
            compare_panel(
                ax, rax, range_edges(s[:2], hist_bins), s, ("sim", "model", "sim2"), xlabel
            )
        paths.append(save(fig, out_dir / f"overlay_{name}.png"))
    return paths


def _num(v: Any) -> float:
    return np.nan if v is None else float(v)


@styled
def plot_metric_vs_bin(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    path: str | Path,
    *,
    unit: str = "",
    tolerance: float | None = None,
) -> Path:
    """A per-bin metric (model vs sim) beside its baseline (sim2 vs sim), one panel per variable.

    ``rows`` are :class:`~detlearn.evaluation.density.ValidationResult` rows (keys
    ``variable``, ``lo``, ``hi``, ``<metric>`` and optionally ``<metric>_baseline``). With a
    ``tolerance``, tolerance × baseline is drawn as a dashed line (e.g. 2 for W1).
    """
    variables = list(dict.fromkeys(r["variable"] for r in rows))
    if not variables:
        raise DetlearnError("plot_metric_vs_bin: no rows")
    fig = Figure(figsize=(5.0 * len(variables), 4.5), layout="constrained")
    axes = fig.subplots(1, len(variables), squeeze=False)[0]
    for ax, var in zip(axes, variables, strict=True):
        sel = [r for r in rows if r["variable"] == var]
        lo = np.array([r["lo"] for r in sel], dtype=np.float64)
        hi = np.array([r["hi"] for r in sel], dtype=np.float64)
        x, xerr = 0.5 * (lo + hi), 0.5 * (hi - lo)
        ax.errorbar(x, [_num(r.get(metric)) for r in sel], xerr=xerr, fmt="o", color=MODEL,
                    label="model vs sim")  # fmt: skip
        values = [_num(r.get(metric)) for r in sel]
        if any(f"{metric}_baseline" in r for r in sel):
            base = np.array([_num(r.get(f"{metric}_baseline")) for r in sel])
            ax.errorbar(x, base, xerr=xerr, fmt="s", mfc="none", color=SIM2, label="sim2 vs sim")
            if tolerance is not None:
                ax.hlines(tolerance * base, lo, hi, colors=SIM2, linestyles="dashed",
                          label=f"{tolerance:g} × baseline")  # fmt: skip
                values += list(tolerance * base)
        ax.set_xlabel(var)
        ax.set_ylabel(f"{metric} [{unit}]" if unit else metric)
        top = np.nanmax(values) if np.any(np.isfinite(values)) else 1.0
        ax.set_ylim(0, 1.35 * top if top > 0 else 1.0)
        ax.legend(loc="upper right")
        exp_label(ax)
    return save(fig, path)


@styled
def plot_pit(u: np.ndarray, path: str | Path, *, bins: int = 20) -> Path:
    """Histogram of PIT values u = F_model(t_sim | c) against the uniform expectation.

    The band is the ±1σ binomial spread of a bin's count for a perfectly calibrated model.
    A ∪ shape means the model is too narrow, ∩ too wide, a slope a bias.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.histogram(u, edges)[0]
    expected = u.size / bins
    sigma = math.sqrt(expected * (1.0 - 1.0 / bins))
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(
        [0, 1],
        expected - sigma,
        expected + sigma,
        color=SIM2,
        alpha=0.3,
        label=r"uniform $\pm 1\sigma$",
    )
    mplhep.histplot(counts, edges, ax=ax, color=MODEL, label="PIT of sim under model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.4 * max(counts.max(), expected + sigma))
    ax.set_xlabel("u = F_model(t | c)")
    ax.set_ylabel("events")
    ax.legend(loc="upper right")
    exp_label(ax)
    return save(fig, path)


@styled
def plot_hist_compare(
    a: np.ndarray,
    b: np.ndarray,
    labels: tuple[str, str],
    path: str | Path,
    bins: int | Sequence[float] | np.ndarray = 50,
    xlabel: str = "",
    *,
    logy: bool = False,
) -> Path:
    """Normalized histograms of two samples (e.g. photon counts, first-photon times), with b / a.

    Args:
        a: the reference (simulation) sample.
        b: the compared sample.
        labels: their legend labels.
        bins: number of equal-width bins over the central 99.8 % of both, or explicit edges
            (use integer-aligned edges for counts).
        xlabel: x-axis label, with its unit.
        logy: logarithmic y axis.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    edges = range_edges((a, b), bins) if np.ndim(bins) == 0 else np.asarray(bins, dtype=np.float64)
    fig = Figure(figsize=(6.5, 6.0))
    ax, rax = ratio_axes(fig, ratio_grid(fig, 1, 1)[0])
    compare_panel(ax, rax, edges, (a, b), labels, xlabel, logy)
    exp_label(ax)
    return save(fig, path)
