"""The ECal-veto demo's models side by side: which classifier vetoes best, and what a
mass-parameterized network loses at masses it never saw.

From each model's report (``metrics.json``, see :mod:`.evaluate`): the signal efficiency at
ε_B = 1e-3 per A′ mass and its mean over masses with a bootstrap error. Two targets:

- ``best_network_margin_over_bdt``: the lower end of the best network's 68 % bootstrap
  interval of the mean ε_S, less the upper end of the BDT's: > 0 when the two do not overlap;
- ``heldout_mass_loss``: at the masses held out of training, the mean ε_S of the
  mass-parameterized CNN trained on all masses less that of the one that never saw them
  (≤ 0.02: two points of signal efficiency).

Beside them, not targets, the same at ε_B = 1e-2, which a demo-sized test set measures with
a smaller error. Every figure is of fiducial events (:mod:`.evaluate`).

A value is None (and its target unmet) where the test set cannot resolve ε_B = 1e-3.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from detlearn.plots.style import exp_label, save, styled
from detlearn.recipes.ecal_veto.evaluate import REFERENCE_EFF_B
from detlearn.report import write_report

__all__ = ["BDT", "HELDOUT_PAIR", "TARGETS", "compare"]

#: The baseline's variant name, and the (held out, trained on all masses) pair of variants.
BDT = "bdt"
HELDOUT_PAIR = ("cnn_mass", "cnn_mass_all")
#: The recipe's quality targets.
TARGETS: dict[str, tuple[str, float]] = {
    "best_network_margin_over_bdt": (">", 0.0),
    "heldout_mass_loss": ("<=", 0.02),
}
_EFF = f"ε_S at ε_B={REFERENCE_EFF_B:g}"
# A looser working point beside it, better measured by a demo-sized test set.
_EFF_LOOSE = "ε_S at ε_B=0.01"


def _mean(rows: list[dict[str, Any]], eff: str) -> float | None:
    values = [r[eff] for r in rows]
    return None if any(v is None for v in values) else float(np.mean(values))


def _margin(summaries: Mapping[str, dict[str, Any]]) -> float | None:
    bdt = summaries.get(BDT, {}).get("mean_eff_s_at_1e-3", {})
    nets = [s["mean_eff_s_at_1e-3"] for name, s in summaries.items() if name != BDT]
    nets = [n for n in nets if n.get("value") is not None]
    if bdt.get("value") is None or not nets:
        return None
    best = max(nets, key=lambda n: n["value"])
    return best["lo"] - bdt["hi"]


def _heldout_loss(tables: Mapping[str, list[dict[str, Any]]], eff: str = _EFF) -> float | None:
    held, everything = (tables.get(name) for name in HELDOUT_PAIR)
    if held is None or everything is None:
        return None
    masses = [r["mass [MeV]"] for r in held if not r["in training"]]
    by_mass = {r["mass [MeV]"]: r[eff] for r in everything}
    pairs = [(by_mass.get(m), r[eff]) for m in masses for r in held if r["mass [MeV]"] == m]
    if not pairs or any(a is None or b is None for a, b in pairs):
        return None
    return float(np.mean([a - b for a, b in pairs]))


@styled
def _per_mass_figure(tables: Mapping[str, list[dict[str, Any]]], path: Path) -> Path:
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for name, rows in tables.items():
        shown = [r for r in rows if r[_EFF] is not None]
        if not shown:
            continue
        mass = [r["mass [MeV]"] for r in shown]
        eff = [r[_EFF] for r in shown]
        line = ax.plot(mass, eff, marker="o", label=name)[0]
        held = [r for r in shown if not r["in training"]]
        ax.scatter([r["mass [MeV]"] for r in held], [r[_EFF] for r in held], s=90,
                   facecolors="none", edgecolors=line.get_color())  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(r"$m_{A'}$ [MeV] (open: held out of training)")
    ax.set_ylabel(rf"$\varepsilon_S$ at $\varepsilon_B$ = {REFERENCE_EFF_B:g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=10)
    exp_label(ax)
    return save(fig, path)


def compare(reports: Mapping[str, Path], out_dir: Path) -> Path:
    """The comparison report of the demo's models (module docstring); returns its path."""
    loaded = {
        name: json.loads(Path(r).with_name("metrics.json").read_text())
        for name, r in reports.items()
    }
    summaries = {name: m["metrics"] for name, m in loaded.items()}
    tables = {name: m["tables"][0]["rows"] for name, m in loaded.items()}
    rows = [
        {
            "model": name,
            "mean ε_S at ε_B=1e-3": s["mean_eff_s_at_1e-3"]["value"],
            "± (bootstrap)": s["mean_eff_s_at_1e-3"]["error"],
            "trained masses": s["mean_eff_s_at_1e-3_trained_masses"]["value"],
            "held-out masses": s["mean_eff_s_at_1e-3_heldout_masses"]["value"],
            "mean ε_S at ε_B=1e-2": _mean(tables[name], _EFF_LOOSE),
            "report": f"{name}/report.html",
        }
        for name, s in summaries.items()
    ]
    metrics = {
        "best_network_margin_over_bdt": _margin(summaries),
        "heldout_mass_loss": _heldout_loss(tables),
        "heldout_mass_loss_at_1e-2": _heldout_loss(tables, _EFF_LOOSE),
    }
    figure = _per_mass_figure(tables, out_dir / "figures" / "eff_s_per_mass.png")
    return write_report(
        out_dir,
        "ECal veto: the demo's classifiers side by side",
        metrics,
        tables=[("mean over A′ masses", rows)],
        figures=[(f"ε_S at ε_B = {REFERENCE_EFF_B:g} per A′ mass and model", figure)],
        targets=TARGETS,
    )
