"""Validation of a mass-grid surrogate at held-out grid points (report.html + metrics.json).

The run is trained with ``split.holdout`` (by default the interior checkerboard of the grid), so
the flow never saw the held-out labels (m_Φ, m_ω): each is a pure interpolation test. At every
held-out label, with n = ``evaluation.options.samples`` draws each:

- the surrogate draws n (m_Φ,reco, m_ω,reco); the simulator (:func:`~.density.sample_reco`)
  draws two independent samples "sim" and "sim2" (the sim-vs-sim baseline at the same n);
- per feature: the relative error (model − sim)/|sim| of the mean, of the 68 % width
  (:func:`~detlearn.evaluation.metrics.width68`) and of the 5/16/50/84/95 % quantiles, each
  beside the same error of sim2;
- the statistical floor of a mean or width error: z √2 σ_boot/|value|, σ_boot the bootstrap
  standard deviation of the statistic on sim (the difference of two samples of size n). z
  gives 95 % coverage to all the judged checks at once (:func:`floor_z`: two features at every
  interior held-out label; σ_boot from ``bootstrap`` resamples, hence Student's t: z = 3.99 for
  the 64 checks of a 10 x 10 grid's checkerboard and 20 resamples): the target
  is "every point", and with a per-check 95 % floor the simulator itself would fail it nearly
  always (0.95^64 ≈ 4 % of the time it would pass). A point meets the target when |error| ≤
  max(``tolerance``, floor) for both features; sim2 is judged alike (``pass_*_sim2``), so the
  pass fractions stand beside the simulator's own;
- beside it, for scale, the **data spread**: 2 σ_boot/|value| of the statistic measured on as
  many simulated events as the training split holds at that label (the rows the holdout
  removed; read from the run's dataset when it is still there): how well the training data at
  one label pin the statistic. A model that interpolates within it has learned what its data
  show; one within a fraction of it has pooled the neighbouring labels. Not a target;
- the 2-D energy distance (features standardized by sim's standard deviation), model vs sim
  and sim2 vs sim; KL(sim ∥ model) in nats from the exact density (:func:`~.density.log_density`).

Figures: maps of the mean and width errors over the grid (model and sim2), FEDHEX-style panels
per label (generated, simulated, sim2; overlay; binned pulls of model and sim2 against sim) and
marginal overlays with ratios, and the training loss.

Example:
    >>> evaluate("runs/mass-grid", "reports/mass-grid")   # doctest: +SKIP
    PosixPath('reports/mass-grid/report.html')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detlearn.config import merge_options
from detlearn.data.holdout import holdout_mask
from detlearn.errors import DetlearnError
from detlearn.evaluation.floors import floor_z, statistical_floor
from detlearn.evaluation.metrics import Score, energy_distance, kl_from_exact, width68
from detlearn.plots.loss import plot_loss
from detlearn.recipes.mass_grid.density import (
    CONTEXT,
    TARGET,
    MassGridConfig,
    grid_points,
    log_density,
    sample_reco,
)
from detlearn.recipes.mass_grid.plots import (
    PointSamples,
    plot_error_maps,
    plot_fedhex_panels,
    plot_marginals,
)
from detlearn.recipes.mass_grid.simulate import config_from_options
from detlearn.report import Section, write_report
from detlearn.runs import RunInfo, Surrogate

__all__ = [
    "CONTEXT",
    "OPTIONS",
    "QUANTILES",
    "TARGET",
    "TARGETS",
    "PointSamples",
    "compare_at_label",
    "evaluate",
    "heldout_labels",
    "train_rows_at",
]

#: Quantiles whose relative errors are reported.
QUANTILES = (0.05, 0.16, 0.5, 0.84, 0.95)
#: Defaults of ``evaluation.options``: draws per label and per sample, the tolerance on the
#: relative mean and width errors, bootstrap resamples of the floor, labels shown as panels.
OPTIONS: dict[str, Any] = {"samples": 100_000, "tolerance": 0.01, "bootstrap": 20, "panels": 4}
#: The recipe's quality targets (issue: mass-grid validation): every interior held-out point
#: within max(tolerance, floor) on the means and the 68 % widths of both reconstructed masses,
#: the floor covering all those checks at once (:func:`floor_z`).
TARGETS: dict[str, tuple[str, float]] = {
    "mean_pass_fraction": (">=", 1.0),
    "width_pass_fraction": (">=", 1.0),
}


def _rel(value: float, reference: float) -> float:
    return (value - reference) / abs(reference)


def compare_at_label(
    surrogate: Any,
    sim_cfg: MassGridConfig,
    label: np.ndarray,
    n: int,
    *,
    tolerance: float = 0.01,
    bootstrap: int = 20,
    seed: int = 0,
    train_rows: int | None = None,
    checks: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]], PointSamples]:
    """Surrogate vs simulator at one label (m_Φ, m_ω) [GeV], n draws per sample.

    ``train_rows``: the training split's rows at this label, for the data spread (``*_data``).
    ``checks``: how many checks the floor covers at once (:func:`floor_z`; evaluate passes two
    per interior held-out label).

    Returns:
        ``(row, quantile_rows, samples)``. ``row`` holds per feature f (``phi``, ``omega``)
        ``mean_f`` and ``width_f`` (relative errors, model vs sim), ``*_sim2`` (sim2 vs sim),
        ``*_floor`` (statistical floor), ``*_data`` (data spread, with ``train_rows``), and
        ``energy``, ``energy_sim2`` (standardized 2-D energy distance), ``kl``, ``kl_error``
        [nats], ``kl_zero_density`` (simulated points where the model's density is 0, left out
        of the KL), ``pass_mean``, ``pass_width`` and the same judgement of sim2,
        ``pass_mean_sim2``, ``pass_width_sim2``.
        ``quantile_rows`` holds one row per feature with the relative errors of
        :data:`QUANTILES`, model (``q05`` …) and sim2 (``q05_sim2`` …).
    """
    label = np.asarray(label, dtype=np.float64)
    # Separate streams for the samples, the floor's bootstrap and the data spread's: the floor
    # of a point does not depend on whether the data spread is computed beside it.
    rng, floor_rng, data_rng = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence([seed, *np.round(label * 1e6).astype(np.int64)]).spawn(3)
    )
    labels = np.broadcast_to(label, (n, 2))
    sim, sim2 = sample_reco(labels, sim_cfg, rng), sample_reco(labels, sim_cfg, rng)
    context = dict(zip(CONTEXT, label, strict=True))
    model = surrogate.sample(context, n, seed=int(rng.integers(2**31)))[0].astype(np.float64)
    samples = PointSamples(label, model, sim, sim2)

    row: dict[str, Any] = dict(context)
    q_rows = []
    passes = {"mean": True, "width": True, "mean_sim2": True, "width_sim2": True}
    z = floor_z(checks, bootstrap)
    for j, f in enumerate(TARGET):
        a, m, b = sim[:, j], model[:, j], sim2[:, j]
        for name, stat in (("mean", np.mean), ("width", width68)):
            ref = float(stat(a))
            row[f"{name}_{f}"] = _rel(float(stat(m)), ref)
            row[f"{name}_{f}_sim2"] = _rel(float(stat(b)), ref)
            row[f"{name}_{f}_floor"] = statistical_floor(a, stat, bootstrap, floor_rng, z=z)
            if train_rows:
                row[f"{name}_{f}_data"] = statistical_floor(
                    a, stat, bootstrap, data_rng, size=train_rows
                )
            limit = max(tolerance, row[f"{name}_{f}_floor"])
            passes[name] &= abs(row[f"{name}_{f}"]) <= limit
            passes[f"{name}_sim2"] &= abs(row[f"{name}_{f}_sim2"]) <= limit
        qa, qm, qb = (np.quantile(s, QUANTILES) for s in (a, m, b))
        q_row: dict[str, Any] = {**context, "feature": f}
        q_row |= {
            f"q{round(100 * q):02d}": v for q, v in zip(QUANTILES, (qm - qa) / qa, strict=True)
        }
        q_row |= {
            f"q{round(100 * q):02d}_sim2": v for q, v in zip(QUANTILES, (qb - qa) / qa, strict=True)
        }
        q_rows.append(q_row)

    scale = sim.std(axis=0)
    row["energy"] = energy_distance(sim / scale, model / scale, seed=seed)
    row["energy_sim2"] = energy_distance(sim / scale, sim2 / scale, seed=seed)
    log_q = surrogate.log_prob(sim, {k: np.full(n, v) for k, v in context.items()})
    # A simulated m_ω within float32 rounding of the threshold sits on the model's support
    # boundary (density 0 there): counted, and left out of the KL average.
    finite = np.isfinite(log_q)
    row["kl"], row["kl_error"] = kl_from_exact(
        log_density(sim[finite], label, sim_cfg), log_q[finite]
    )
    row["kl_zero_density"] = int((~finite).sum())
    row |= {f"pass_{k}": v for k, v in passes.items()}
    return row, q_rows, samples


def heldout_labels(info: RunInfo, sim_cfg: MassGridConfig) -> np.ndarray:
    """The held-out labels [P, 2] (m_Φ, m_ω) [GeV] of a run, from its ``run.json`` info.

    A holdout on both context columns gives its points; a holdout on one column (a whole row
    of the grid) is expanded over the simulator's grid.
    """
    holdout = info.holdout
    if not holdout:
        raise DetlearnError(
            "the run was trained without split.holdout: no held-out grid points to evaluate "
            "(set split.holdout, e.g. {columns: [label_phi, label_omega], points: checkerboard})"
        )
    columns, points = holdout["columns"], np.asarray(holdout["points"], dtype=np.float64)
    if sorted(columns) == sorted(CONTEXT):
        return points[:, [columns.index(c) for c in CONTEXT]]
    grid = grid_points(sim_cfg)
    labels = grid[
        holdout_mask(grid[:, [CONTEXT.index(c) for c in columns]], points, holdout["rtol"])
    ]
    if len(labels) == 0:
        raise DetlearnError(f"held-out points {points.tolist()} are not on the simulator's grid")
    return labels


def train_rows_at(info: RunInfo, labels: np.ndarray) -> list[int | None]:
    """Rows of the run's training split at each label (held out from training), or None per
    label when the run's dataset is no longer readable."""
    try:
        part = info.load_split(list(CONTEXT), "train")
    except (DetlearnError, OSError, KeyError):
        return [None] * len(labels)
    rows = np.stack([part[k] for k in CONTEXT], 1)
    rtol = (info.holdout or {}).get("rtol", 1e-6)
    return [int(holdout_mask(rows, label[None, :], rtol).sum()) for label in labels]


def _interior(labels: np.ndarray, info: RunInfo) -> np.ndarray:
    """Labels strictly inside the training range of every context column (interpolation)."""
    lo, hi = info.context_range()
    return np.all((labels > lo) & (labels < hi), axis=1)


def _tag(label: np.ndarray) -> str:
    return f"mPhi={label[0]:g} GeV, mOmega={label[1]:g} GeV"


def evaluate(
    run_dir: str | Path, out_dir: str | Path, sections: Sequence[Section] = (), seed: int = 0
) -> Path:
    """Validate the surrogate in ``run_dir`` at its held-out labels; returns the report path.

    ``evaluation.options`` of the run's config may set ``samples``, ``tolerance``,
    ``bootstrap`` and ``panels`` (defaults :data:`OPTIONS`). The simulator config is the run's
    ``simulate`` section. The pass fractions count the interior held-out labels (strictly
    inside the training range of both masses); a held-out label on the edge of the grid is an
    extrapolation, reported in the tables but not judged, unless no label is interior.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    surrogate = Surrogate.load(run_dir, recipe="mass-grid")
    if tuple(surrogate.context_names) != CONTEXT or tuple(surrogate.target_names) != TARGET:
        raise DetlearnError(
            f"{run_dir}: expected context {list(CONTEXT)} and target {list(TARGET)} "
            f"(got {surrogate.context_names} and {surrogate.target_names})"
        )
    config: dict[str, Any] = surrogate.info.config.model_dump(mode="json")
    sim_cfg = config_from_options(config.get("simulate"))
    options = merge_options(OPTIONS, config["evaluation"]["options"], "evaluation.options")
    n, tol = int(options["samples"]), float(options["tolerance"])
    labels = heldout_labels(surrogate.info, sim_cfg)
    interior = _interior(labels, surrogate.info)
    shown = set(
        np.linspace(0, len(labels) - 1, min(int(options["panels"]), len(labels))).astype(int)
    )

    figures_dir = out_dir / "figures"
    rows, q_rows, figures = [], [], []
    train_rows = train_rows_at(surrogate.info, labels)
    # The target judges the interior labels (every one, two features each) at once.
    checks = 2 * int(interior.sum() or len(labels))
    for i, label in enumerate(labels):
        row, q, samples = compare_at_label(
            surrogate,
            sim_cfg,
            label,
            n,
            tolerance=tol,
            bootstrap=int(options["bootstrap"]),
            seed=seed,
            train_rows=train_rows[i],
            checks=checks,
        )
        row["train_rows"] = train_rows[i]
        rows.append({**{k: row[k] for k in CONTEXT}, "interior": bool(interior[i]), **row})
        q_rows += q
        if i in shown:
            figures.append(
                (
                    f"{_tag(label)}: model, simulation and sim2; overlay; binned pulls vs sim",
                    plot_fedhex_panels(samples, figures_dir / f"panels_{i:03d}.png"),
                )
            )
            figures.append(
                (
                    f"{_tag(label)}: marginals of sim, model and sim2, ratios to sim",
                    plot_marginals(samples, figures_dir / f"marginals_{i:03d}.png"),
                )
            )
    grid = grid_points(sim_cfg)
    figures.insert(
        0,
        (
            f"relative errors of means and 68 % widths at the held-out labels (grey: grid), "
            f"model vs sim (top) beside sim2 vs sim (bottom); tolerance ±{100 * tol:g} %",
            plot_error_maps(rows, grid, tol, figures_dir / "error_maps.png"),
        ),
    )
    history = run_dir / "flow" / "history.csv"
    if history.is_file():
        figures.append(
            ("training and validation loss", plot_loss(history, figures_dir / "loss.png"))
        )

    judged = [r for r in rows if r["interior"]] or rows
    metrics: dict[str, Any] = {}
    for stat in ("mean", "width"):
        cols = [f"{stat}_{f}" for f in TARGET]
        metrics[f"{stat}_pass_fraction"] = Score(
            f"{stat}_pass_fraction",
            float(np.mean([r[f"pass_{stat}"] for r in judged])),
            baseline=float(np.mean([r[f"pass_{stat}_sim2"] for r in judged])),
        )
        metrics[f"{stat}_rel_error_max"] = Score(
            f"{stat}_rel_error_max",
            max(abs(r[c]) for r in rows for c in cols),
            baseline=max(abs(r[c + "_sim2"]) for r in rows for c in cols),
        )
        metrics[f"{stat}_floor_max"] = max(r[c + "_floor"] for r in rows for c in cols)
        if all(r["train_rows"] for r in judged):
            # For scale, not a target: within what one label's training data pin down.
            metrics[f"{stat}_within_data_fraction"] = float(
                np.mean([all(abs(r[c]) <= max(tol, r[c + "_data"]) for c in cols) for r in judged])
            )
    q_cols = [f"q{round(100 * q):02d}" for q in QUANTILES]
    metrics["quantile_rel_error_max"] = Score(
        "quantile_rel_error_max",
        max(abs(r[c]) for r in q_rows for c in q_cols),
        baseline=max(abs(r[c + "_sim2"]) for r in q_rows for c in q_cols),
    )
    metrics["energy_distance_mean"] = Score(
        "energy_distance_mean",
        float(np.mean([r["energy"] for r in rows])),
        baseline=float(np.mean([r["energy_sim2"] for r in rows])),
    )
    metrics["kl_mean"] = Score(
        "kl_mean",
        float(np.mean([r["kl"] for r in rows])),
        unit="nats",
        error=float(np.sqrt(np.sum(np.square([r["kl_error"] for r in rows]))) / len(rows)),
    )
    metrics["kl_zero_density"] = sum(r["kl_zero_density"] for r in rows)
    metrics["tolerance"] = tol
    metrics["heldout_points"] = len(rows)
    metrics["interior_points"] = int(interior.sum())
    # Grid labels left out of training for too few rows (split.min_label_rows).
    sparse = surrogate.info.sparse_labels or {}
    metrics["labels_left_out"] = len(sparse.get("labels", []))
    metrics["samples_per_point"] = n
    return write_report(
        out_dir,
        "mass-grid surrogate: interpolation to held-out grid points",
        metrics,
        tables=[
            ("per held-out label: relative errors of means and 68 % widths, distances", rows),
            ("per held-out label and feature: relative errors of quantiles", q_rows),
        ],
        figures=figures,
        targets=TARGETS,
        sections=sections,
    )
