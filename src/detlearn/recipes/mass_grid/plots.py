"""Figures of the mass-grid evaluation (:mod:`.evaluate`): error maps, FEDHEX panels, marginals.

Each function writes one PNG and returns its path; every figure shows the second simulated
sample (sim2) beside the model, as the reference for how much two simulations differ by chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from detlearn.plots.style import compare_panel, exp_label, ratio_axes, ratio_grid, save, styled
from detlearn.recipes.mass_grid.density import CONTEXT, TARGET

__all__ = ["PointSamples", "plot_error_maps", "plot_fedhex_panels", "plot_marginals"]

_MAP_COLUMNS = [f"{s}_{f}" for s in ("mean", "width") for f in TARGET]
_FEATURE_LABEL = {"phi": r"$m_{\Phi}^{reco}$", "omega": r"$m_{\omega}^{reco}$"}


@dataclass(frozen=True)
class PointSamples:
    """The three samples at one label, each ``(n, 2)`` (m_Φ,reco, m_ω,reco) [GeV]."""

    label: np.ndarray
    model: np.ndarray
    sim: np.ndarray
    sim2: np.ndarray


@styled
def plot_error_maps(
    rows: list[dict[str, Any]], grid: np.ndarray, tolerance: float, path: Path
) -> Path:
    """Relative mean/width errors at the held-out labels: model (top) and sim2 (bottom) [%]."""
    fig = Figure(figsize=(22.0, 10.0), layout="constrained")
    axes = fig.subplots(2, len(_MAP_COLUMNS), squeeze=False)
    x = np.array([r[CONTEXT[0]] for r in rows])
    y = np.array([r[CONTEXT[1]] for r in rows])
    limit = 200.0 * tolerance
    # A square per label about 80 % of a grid cell wide (a panel is ~280 pt wide).
    cells = max(len(np.unique(grid[:, 0])), len(np.unique(grid[:, 1])))
    size = (0.8 * 280.0 / cells) ** 2
    for i, suffix in enumerate(("", "_sim2")):
        for j, col in enumerate(_MAP_COLUMNS):
            ax = axes[i, j]
            values = 100.0 * np.array([r[col + suffix] for r in rows])
            ax.scatter(grid[:, 0], grid[:, 1], s=12, color="0.7", label="grid")
            art = ax.scatter(
                x,
                y,
                c=values,
                s=size,
                marker="s",
                cmap="RdBu_r",
                vmin=-limit,
                vmax=limit,
                edgecolors="k",
                linewidths=0.5,
            )
            for xi, yi, v in zip(x, y, values, strict=True):
                color = "white" if abs(v) > 0.6 * limit else "black"
                ax.annotate(f"{v:.1f}", (xi, yi), ha="center", va="center", fontsize=7, color=color)
            stat, feature = col.split("_")
            who = "model" if not suffix else "sim2"
            ax.set_title(
                f"{stat} {_FEATURE_LABEL[feature]}: {who} vs sim [%]", loc="right", fontsize=12
            )
            ax.set_xlabel(r"$m_{\Phi}$ [GeV]")
            ax.set_ylabel(r"$m_{\omega}$ [GeV]")
            fig.colorbar(art, ax=ax)
    exp_label(axes[0, 0])
    return save(fig, path)


def _edges(samples: PointSamples, bins: int) -> list[np.ndarray]:
    """Per feature, equal-width edges over the central 99 % of sim (the tails run far out)."""
    lo, hi = np.quantile(samples.sim, [0.005, 0.995], axis=0)
    return [np.linspace(lo[j], hi[j], bins + 1) for j in range(2)]


def _pulls(a: np.ndarray, b: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """(N_b − N_a)/√(N_a + N_b) per 2-D bin (equal sample sizes); NaN below 10 entries."""
    na = np.histogram2d(a[:, 0], a[:, 1], edges)[0]
    nb = np.histogram2d(b[:, 0], b[:, 1], edges)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(na + nb >= 10, (nb - na) / np.sqrt(na + nb), np.nan)


@styled
def plot_fedhex_panels(samples: PointSamples, path: Path, bins: int = 50) -> Path:
    """FEDHEX-style panels at one label: generated, simulated, sim2; overlay and binned pulls."""
    edges = _edges(samples, bins)
    fig = Figure(figsize=(19.0, 11.0), layout="constrained")
    axes = fig.subplots(2, 3)
    counts = [np.histogram2d(s[:, 0], s[:, 1], edges)[0] for s in (samples.model, samples.sim)]
    top = max(float(c.max()) for c in counts)
    norm = LogNorm(vmin=1, vmax=top)
    panels = (
        ("generated (model)", samples.model),
        ("simulated", samples.sim),
        ("second simulation (sim2)", samples.sim2),
    )
    for ax, (title, s) in zip(axes[0], panels, strict=True):
        art = ax.hist2d(s[:, 0], s[:, 1], bins=edges, norm=norm, cmap="viridis")[3]
        ax.set_title(title, loc="right", fontsize=12)
        fig.colorbar(art, ax=ax)
    ax = axes[1, 0]
    k = min(len(samples.sim), 5000)
    ax.scatter(
        samples.sim[:k, 0], samples.sim[:k, 1], s=2, alpha=0.3, color="#3f90da", label="simulated"
    )
    ax.scatter(
        samples.model[:k, 0], samples.model[:k, 1], s=2, alpha=0.3, color="#bd1f01", label="model"
    )
    ax.set_xlim(edges[0][0], edges[0][-1])
    ax.set_ylim(edges[1][0], edges[1][-1])
    ax.set_title("overlay", loc="right", fontsize=12)
    ax.legend(loc="upper left", markerscale=5)
    for ax, (who, other) in zip(
        axes[1, 1:], (("model", samples.model), ("sim2", samples.sim2)), strict=True
    ):
        pull = _pulls(samples.sim, other, edges)
        art = ax.pcolormesh(edges[0], edges[1], pull.T, cmap="RdBu_r", vmin=-4, vmax=4)
        rms = float(np.sqrt(np.nanmean(pull**2)))
        ax.set_title(f"pull ({who} − sim)/σ, RMS {rms:.2f}", loc="right", fontsize=12)
        fig.colorbar(art, ax=ax)
    for ax in axes.ravel():
        ax.set_xlabel(r"$m_{\Phi}^{reco}$ [GeV]")
        ax.set_ylabel(r"$m_{\omega}^{reco}$ [GeV]")
    exp_label(axes[0, 0])
    return save(fig, path)


@styled
def plot_marginals(samples: PointSamples, path: Path, bins: int = 60) -> Path:
    """Marginal histograms of sim, model and sim2 with ratios to sim, one panel per feature."""
    edges = _edges(samples, bins)
    fig = Figure(figsize=(12.0, 5.5))
    grid = ratio_grid(fig, 1, 2)
    for j, f in enumerate(TARGET):
        ax, rax = ratio_axes(fig, grid[0, j])
        s = (samples.sim[:, j], samples.model[:, j], samples.sim2[:, j])
        compare_panel(ax, rax, edges[j], s, ("sim", "model", "sim2"), f"{_FEATURE_LABEL[f]} [GeV]")
        if j == 0:
            exp_label(ax)
    return save(fig, path)
