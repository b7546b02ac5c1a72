"""Latency curves: time per row against batch size, one curve per runtime.

Example:
    >>> plot_latency(latency_curves(runtimes, x, [256, 4096]), "timing.png")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from detlearn.plots.style import exp_label, save, styled

__all__ = ["plot_latency"]


def plot_latency(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    target_ns: float | None = None,
) -> Path:
    """Per-row latency [ns] vs batch size (log-log), one curve per runtime, 16–84 % band."""

    @styled
    def draw() -> Path:
        fig = Figure(figsize=(7, 5), layout="constrained")
        ax = fig.add_subplot()
        for name, rows in curves.items():
            b = [r["batch"] for r in rows]
            line = ax.plot(b, [r["ns_per_row"] for r in rows], marker="o", label=name)[0]
            ax.fill_between(
                b,
                [r["ns_per_row_p16"] for r in rows],
                [r["ns_per_row_p84"] for r in rows],
                color=line.get_color(),
                alpha=0.2,
            )
        if target_ns is not None:
            ax.axhline(target_ns, color="k", ls="--", lw=1, label=f"target {target_ns:g} ns")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size [rows]")
        ax.set_ylabel("time per row [ns]")
        ax.legend(fontsize=10)
        exp_label(ax)
        return save(fig, path)

    return draw()
