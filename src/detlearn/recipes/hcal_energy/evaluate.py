"""Validation of an HCAL channel-energy regressor against MAHI-lite and M0 (FACILE's definitions).

On the test split (channels never seen in training), per (PU bin, pT bin) and for each method
E ∈ {DNN, MAHI-lite (``energy``), M0 (``eraw``)}, as ``performance-models.py`` defines them:

- ΔE = E − E_gen, trimmed to its 2–98 % quantiles; μ and σ are the trimmed mean and standard
  deviation [GeV];
- E_ref = the pT bin's centre [GeV] (the original's energy scale); response = 1 − μ/E_ref;
  c = 1 − μ/E_ref, inverted when below 1 (so c ≥ 1); resolution = σ/E_ref · c ("response
  corrected"; undefined, NaN, when the response is ≤ 0);
- and the usual σ_eff of E/E_gen: half the width of the narrowest interval holding 68.3 %.

Bins are half-open, [lo, hi). Each method's resolution carries its statistical error
σ/E_ref · c / √(2n); the DNN beats MAHI-lite in a bin when its resolution is lower. The report
lists every bin where it does not, and how large the difference is against that error.
Figures: ``response_{i}.png`` and ``resolution_{i}.png`` per PU bin (vs pT), ``dE_{i}.png``
(the trimmed ΔE histograms of every pT bin), ``timing.png`` (per-channel inference time vs
batch size in torch eager, TorchScript and onnxruntime on the exported graph), the training
loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from detlearn.config import merge_options
from detlearn.errors import DetlearnError
from detlearn.evaluation.latency import latency_curves
from detlearn.evaluation.regression import TRIM, bin_stats, sigma_eff
from detlearn.export.regressor import regressor_runtimes
from detlearn.io.dataset import Dataset
from detlearn.plots.latency import plot_latency
from detlearn.plots.loss import plot_loss
from detlearn.plots.style import exp_label, save, styled
from detlearn.report import Section, write_report
from detlearn.runs import Regression

__all__ = ["METHODS", "OPTIONS", "TARGETS", "evaluate"]

#: Default ``evaluation.options``: bin edges (PU: FACILE HEAD's plus a low-PU bin; pT [GeV]:
#: FACILE's), the fewest channels for a bin to be scored, and the timing batch sizes.
OPTIONS: dict[str, Any] = {
    "pu_edges": [0, 30, 60, 80, 110],
    "pt_edges": [1, 5, 10, 15, 20, 25, 30, 40, 60, 80, 100],
    "min_rows": 100,
    "timing_batches": [256, 1024, 4096, 16384, 65536],
}
#: method label -> dataset column (the DNN's prediction is added as column "DNN").
METHODS = {"DNN": "DNN", "MAHI-lite": "energy", "M0": "eraw"}
#: The recipe's quality target: the DNN's resolution is better than MAHI-lite's in most bins.
TARGETS: dict[str, tuple[str, float]] = {"dnn_beats_mahi_fraction": (">", 0.5)}
_COLORS = {"DNN": "#bd1f01", "MAHI-lite": "#3f90da", "M0": "#717581"}


def _table(
    data: dict[str, np.ndarray], pu_edges: list[float], pt_edges: list[float], min_rows: int
) -> list[dict[str, Any]]:
    rows = []
    for i, (pu_lo, pu_hi) in enumerate(itertools.pairwise(pu_edges)):
        in_pu = (data["PU"] >= pu_lo) & (data["PU"] < pu_hi)
        for pt_lo, pt_hi in itertools.pairwise(pt_edges):
            sel = in_pu & (data["pt"] >= pt_lo) & (data["pt"] < pt_hi)
            n = int(sel.sum())
            if n < min_rows:
                continue
            row: dict[str, Any] = {
                "pu_bin": i,
                "PU": f"[{pu_lo:g}, {pu_hi:g})",
                "pt_lo": pt_lo,
                "pt_hi": pt_hi,
                "n": n,
            }
            e_ref = 0.5 * (pt_lo + pt_hi)
            for label, col in METHODS.items():
                stats = bin_stats(data[col][sel], data["genE"][sel], e_ref)
                row |= {f"{label}_{k}": v for k, v in stats.items()}
            diff = row["DNN_resolution"] - row["MAHI-lite_resolution"]
            err = np.hypot(row["DNN_resolution_err"], row["MAHI-lite_resolution_err"])
            row["dnn_vs_mahi_rel"] = diff / row["MAHI-lite_resolution"]
            row["dnn_vs_mahi_pull"] = diff / err
            row["dnn_better"] = bool(diff < 0)
            rows.append(row)
    return rows


def _plots(
    rows: list[dict[str, Any]],
    data: dict[str, np.ndarray],
    pu_edges: list[float],
    out: Path,
) -> list[tuple[str, Path]]:
    @styled
    def per_pu(i: int, key: str, ylabel: str) -> Path:
        sel = [r for r in rows if r["pu_bin"] == i]
        fig = Figure(figsize=(7, 5), layout="constrained")
        ax = fig.add_subplot()
        x = np.array([0.5 * (r["pt_lo"] + r["pt_hi"]) for r in sel])
        xerr = np.array([0.5 * (r["pt_hi"] - r["pt_lo"]) for r in sel])
        for label in METHODS:
            y = [r[f"{label}_{key}"] for r in sel]
            yerr = [r[f"{label}_resolution_err"] for r in sel] if key == "resolution" else None
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=_COLORS[label], label=label)
        if key == "response":
            ax.axhline(1.0, color="k", lw=1, ls=":")
        ax.set_xlabel(r"$p_T$ [GeV]")
        ax.set_ylabel(ylabel)
        ax.legend(title=f"PU {sel[0]['PU']}", fontsize=11)
        exp_label(ax)
        return save(fig, out / f"{key}_{i}.png")

    @styled
    def histograms(i: int) -> Path:
        sel = [r for r in rows if r["pu_bin"] == i]
        ncols = 5
        nrows = -(-len(sel) // ncols)
        fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        pu_lo, pu_hi = pu_edges[i], pu_edges[i + 1]
        for ax, r in zip(axes, sel, strict=False):
            mask = (
                (data["PU"] >= pu_lo)
                & (data["PU"] < pu_hi)
                & (data["pt"] >= r["pt_lo"])
                & (data["pt"] < r["pt_hi"])
            )
            for label, col in METHODS.items():
                de = data[col][mask] - data["genE"][mask]
                lo, hi = np.quantile(de, TRIM)
                de = de[(de >= lo) & (de <= hi)]
                ax.hist(de, bins=40, histtype="step", density=True, color=_COLORS[label],
                        label=label)  # fmt: skip
            ax.set_title(f"$p_T$ [{r['pt_lo']:g}, {r['pt_hi']:g}) GeV", fontsize=11)
            ax.set_xlabel(r"$\Delta E$ [GeV]", fontsize=11)
            ax.tick_params(labelsize=9)
        for ax in axes[len(sel) :]:
            ax.set_visible(False)
        axes[0].legend(fontsize=9, title=f"PU {sel[0]['PU']}", title_fontsize=9)
        return save(fig, out / f"dE_{i}.png")

    figures: list[tuple[str, Path]] = []
    for i in sorted({r["pu_bin"] for r in rows}):
        pu = rows[[r["pu_bin"] for r in rows].index(i)]["PU"]
        figures += [
            (f"response 1 − μ/E vs pT, PU {pu}", per_pu(i, "response", r"response $1-\mu/E$")),
            (
                f"response-corrected resolution σ/E·c vs pT, PU {pu}",
                per_pu(i, "resolution", r"resolution $\sigma_E/E$"),
            ),
            (f"ΔE = E − E_gen per pT bin (2–98 % trimmed), PU {pu}", histograms(i)),
        ]
    return figures


def evaluate(
    run_dir: str | Path, out_dir: str | Path, sections: Sequence[Section] = (), seed: int = 0
) -> Path:
    """Score the regressor in ``run_dir`` against MAHI-lite and M0; returns the report path.

    The test split of the run's dataset must hold the observer columns ``PU``, ``pt``,
    ``energy`` (MAHI-lite) and ``eraw`` (M0) beside the regressor's inputs and ``genE``.
    ``seed`` is unused (the evaluation draws nothing); it keeps the recipe signature.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    reg = Regression.load(run_dir, recipe="hcal-energy")
    config: dict[str, Any] = reg.info.config.model_dump(mode="json")
    options = merge_options(OPTIONS, config["evaluation"]["options"], "evaluation.options")
    ds = Dataset.open(reg.info.dataset)
    needed = ["genE", "PU", "pt", "energy", "eraw"]
    missing = [c for c in needed if c not in ds.columns]
    if missing:
        raise DetlearnError(
            f"{ds.root}: the hcal-energy evaluation needs column '{missing[0]}' "
            f"(needs {', '.join(needed)})"
        )
    data = reg.info.load_split([*reg.input_names, *needed], "test")
    n = min(len(data["genE"]), int(config["evaluation"]["max_rows"]))
    if n == 0:
        raise DetlearnError(f"{ds.root}: the test split is empty; prepare more channels")
    data = {k: v[:n].astype(np.float64) for k, v in data.items()}
    x = np.stack([data[k] for k in reg.input_names], 1).astype(np.float32)
    data["DNN"] = reg.predict(x).astype(np.float64)

    pu_edges = [float(v) for v in options["pu_edges"]]
    pt_edges = [float(v) for v in options["pt_edges"]]
    rows = _table(data, pu_edges, pt_edges, int(options["min_rows"]))
    if not rows:
        raise DetlearnError(
            f"{ds.root}: no (PU, pT) bin has {options['min_rows']} test channels; "
            "prepare more channels or lower evaluation.options.min_rows"
        )
    figures_dir = out_dir / "figures"
    figures = _plots(rows, data, pu_edges, figures_dir)

    runtimes = regressor_runtimes(reg.model, x[:4096])
    timing = latency_curves(runtimes, x, options["timing_batches"], trials=5, settle_s=0.5)
    figures.append(
        (
            "per-channel inference time vs batch size (this machine)",
            plot_latency(timing, figures_dir / "timing.png"),
        )
    )
    history = run_dir / "regressor" / "history.csv"
    if history.is_file():
        figures.append(
            ("training and validation loss", plot_loss(history, figures_dir / "loss.png"))
        )

    better = [r["dnn_better"] for r in rows]
    not_better = [
        {
            "PU": r["PU"],
            "pT [GeV]": f"[{r['pt_lo']:g}, {r['pt_hi']:g})",
            "n": r["n"],
            "DNN resolution": r["DNN_resolution"],
            "MAHI-lite resolution": r["MAHI-lite_resolution"],
            "DNN/MAHI − 1": r["dnn_vs_mahi_rel"],
            "pull (σ)": r["dnn_vs_mahi_pull"],
        }
        for r in rows
        if not r["dnn_better"]
    ]
    deposit = data["genE"] > 0
    overall = {
        label: sigma_eff(data[col][deposit] / data["genE"][deposit])
        for label, col in METHODS.items()
    }
    metrics: dict[str, Any] = {
        "dnn_beats_mahi_fraction": float(np.mean(better)),
        "bins_scored": len(rows),
        "bins_dnn_not_better": len(not_better),
        "median_dnn_vs_mahi_rel": float(np.median([r["dnn_vs_mahi_rel"] for r in rows])),
        **{f"sigma_eff_{label}": v for label, v in overall.items()},
        **{
            f"ns_per_channel_{key}_16384": next(
                (r["ns_per_row"] for r in timing[name] if r["batch"] == 16384), float("nan")
            )
            for key, name in [("torch", "torch eager"), ("onnx", "onnxruntime (detlearn export)")]
        },
        "test_channels": n,
        # Inside the bins' PU and pT span (channels softer than the first pT edge, or with
        # more pileup than the last PU edge, are in no bin).
        "test_channels_binned": int(
            np.sum(
                (data["PU"] >= pu_edges[0])
                & (data["PU"] < pu_edges[-1])
                & (data["pt"] >= pt_edges[0])
                & (data["pt"] < pt_edges[-1])
            )
        ),
        # Left out of σ_eff of E/E_gen (only without the recipe's genE > 0.1 selection).
        "test_channels_without_deposit": int((~deposit).sum()),
        "parameters_keras_count": reg.model.keras_parameter_count(),
    }
    summary = [
        {
            "PU": r["PU"],
            "pT [GeV]": f"[{r['pt_lo']:g}, {r['pt_hi']:g})",
            "n": r["n"],
            **{f"{m} resp.": r[f"{m}_response"] for m in METHODS},
            **{f"{m} res.": r[f"{m}_resolution"] for m in METHODS},
            "DNN/MAHI − 1": r["dnn_vs_mahi_rel"],
            **{f"{m} σ_eff": r[f"{m}_sigma_eff"] for m in METHODS},
        }
        for r in rows
    ]
    return write_report(
        out_dir,
        "HCAL channel energy: DNN vs MAHI-lite and M0",
        metrics,
        tables=[
            (
                "per (PU, pT) bin: response 1 − μ/E_ref, resolution σ/E_ref · c and σ_eff of "
                "E/E_gen (half the narrowest interval holding 68.3 %)",
                summary,
            ),
            ("bins where the DNN is not better than MAHI-lite", not_better),
            (
                "per-channel latency [ns]",
                [
                    {
                        "batch": b,
                        **{name: c[i]["ns_per_row"] for name, c in timing.items()},
                        # the hypervisor's share of the CPUs while timed (a VM's slow spells)
                        "CPU steal [%]": 100 * max(c[i]["steal"] for c in timing.values()),
                    }
                    for i, b in enumerate(options["timing_batches"])
                ],
            ),
        ],
        figures=figures,
        targets=TARGETS,
        sections=sections,
    )
