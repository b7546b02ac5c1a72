"""Validation of a KLM timing surrogate against the built-in simulator (report.html + metrics.json).

On the test split (events never seen in training), for every photon row j with context
c_j = (z_j, θ_j, |p|_j) and simulated delay Δt_j:

- the surrogate draws one Δt at c_j, and the simulator draws an independent one (the
  sim-vs-sim baseline at the same contexts and sample size);
- per bin of z (10), θ (4), |p| (3): Wasserstein-1 [ns], KS, two-sample χ²/ndf, PIT
  calibration, each beside its sim-vs-sim baseline; a classifier two-sample test (AUC) on
  (Δt, z, θ, |p|) jointly; KL(sim ∥ model) in nats from the simulator's exact density;
- whole events at fixed reference contexts: photon-count distributions (mean, standard
  deviation and W1 to the simulation, each beside sim2's) and the first-photon
  time resolution (half the 16-84 % range of the earliest Δt in events with
  ≥ ``min_photons`` photons; the standard deviation is reported too), surrogate (count model
  and flow) vs simulator, beside a second simulated sample of the same size;
- the fast simulation through the chain (:mod:`.closure`): ``closure_events`` events written
  by ``detlearn fastsim``'s writer and by the simulator, read back as prepare reads them, per
  z bin and per event, beside a second simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detlearn.config import merge_options
from detlearn.errors import DetlearnError
from detlearn.evaluation.density import validate_conditional
from detlearn.evaluation.metrics import wasserstein1, width68
from detlearn.plots import (
    plot_binned_overlays,
    plot_hist_compare,
    plot_loss,
    plot_metric_vs_bin,
    plot_pit,
)
from detlearn.recipes.klm_timing.closure import closure
from detlearn.recipes.klm_timing.density import log_density
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, sample_delays, simulate_at
from detlearn.report import Section, write_report
from detlearn.runs import Surrogate

__all__ = ["OPTIONS", "REFERENCE_CONTEXTS", "TARGETS", "evaluate"]

#: The recipe's quality targets (issue: KLM timing surrogate).
TARGETS: dict[str, tuple[str, float]] = {
    "kl_mean": ("<=", 0.02),
    "c2st_auc": ("<=", 0.55),
    "w1_pass_fraction": (">=", 1.0),
    "first_photon_resolution_rel_diff_max": ("<=", 0.10),
    "unphysical_fraction": ("<=", 0.0),
    "closure_pass_fraction": (">=", 1.0),
}

#: Default ``evaluation.options``: the whole-event comparison at :data:`REFERENCE_CONTEXTS`
#: uses events with >= ``min_photons`` photons, ``reference_events`` events per context and
#: sample (8000: the sim-vs-sim spread of the first-photon resolution is ~3 %, against the
#: 10 % target); the closure ``closure_events`` events per sample (1000: ~65 000 photons per
#: z bin, three times the rows per bin of the per-bin comparison at the default max_rows).
OPTIONS: dict[str, Any] = {"min_photons": 5, "reference_events": 8000, "closure_events": 1000}
#: Reference contexts (z [mm], θ [rad], |p| [GeV]) for whole-event comparisons.
REFERENCE_CONTEXTS = [
    (-600.0, np.pi / 2, 3.0),
    (-200.0, 1.3, 1.0),
    (0.0, np.pi / 2, 5.0),
    (300.0, 1.8, 0.5),
    (600.0, np.pi / 2, 8.0),
]


def _first_photon(counts: np.ndarray, event: np.ndarray, dt: np.ndarray, k: int) -> np.ndarray:
    """Earliest Δt of each event with at least ``k`` photons."""
    first = np.full(len(counts), np.inf)
    np.minimum.at(first, event, dt)
    return first[counts >= k]


def evaluate(
    run_dir: str | Path, out_dir: str | Path, sections: Sequence[Section] = (), seed: int = 0
) -> Path:
    """Validate the surrogate in ``run_dir`` against the simulator; returns the report path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    surrogate = Surrogate.load(run_dir, recipe="klm-timing")
    config: dict[str, Any] = surrogate.info.config.model_dump(mode="json")
    sim_cfg = KLMSimConfig.model_validate(config.get("simulate") or {})
    names = surrogate.context_names
    if names != ["z", "theta", "p"] or surrogate.target_names != ["dt"]:
        raise DetlearnError(f"{run_dir}: expected context z, theta, p and target dt (got {names})")
    options = merge_options(OPTIONS, config["evaluation"]["options"], "evaluation.options")
    max_rows = int(config["evaluation"]["max_rows"])
    k_min = int(options["min_photons"])

    test = surrogate.info.load_split(["z", "theta", "p", "dt", "photon"], "test")
    rows = np.flatnonzero(test["photon"] > 0)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(rows, min(max_rows, len(rows)), replace=False))
    if len(rows) == 0:
        raise DetlearnError(f"{surrogate.info.dataset}: the test split has no photon rows")
    ctx = np.stack([test[k][rows] for k in names], axis=1)
    dt_sim = test["dt"][rows]

    dt_model = surrogate.sample(ctx, 1, seed=seed)[:, 0, 0]
    dt_sim2 = sample_delays(ctx[:, 0], ctx[:, 1], ctx[:, 2], sim_cfg, rng).astype(np.float64)
    pit = surrogate.pit(dt_sim, ctx)
    log_p = log_density(dt_sim, ctx[:, 0], ctx[:, 1], ctx[:, 2], sim_cfg)
    log_q = surrogate.log_prob(dt_sim, ctx)

    lo, hi = (list(v) for v in surrogate.info.context_range())
    bins = {
        n: np.linspace(a, b, k + 1) for n, a, b, k in zip(names, lo, hi, (10, 4, 3), strict=True)
    }
    result = validate_conditional(
        dt_sim,
        ctx,
        dt_model,
        dt_sim2,
        names,
        bins,
        unit="ns",
        pit=pit,
        log_p_true=log_p,
        log_q_model=log_q,
        lower=surrogate.info.target[0].lower,
        seed=seed,
    )

    figures_dir = out_dir / "figures"
    figures: list[tuple[str, Path]] = []
    overlays = plot_binned_overlays(dt_sim, ctx, dt_model, dt_sim2, names, bins, figures_dir)
    figures += [
        (f"Δt per {n} bin: simulation, surrogate, 2nd simulation", p)
        for n, p in zip(names, overlays, strict=True)
    ]
    figures.append(
        (
            "W1 per bin beside the sim-vs-sim baseline",
            plot_metric_vs_bin(result.rows, "w1", figures_dir / "w1.png", unit="ns", tolerance=2.0),
        )
    )
    figures.append(
        ("PIT of simulated Δt under the surrogate", plot_pit(pit, figures_dir / "pit.png"))
    )
    history = run_dir / "flow" / "history.csv"
    if history.is_file():
        figures.append(
            ("training and validation loss", plot_loss(history, figures_dir / "loss.png"))
        )

    # Whole events at reference contexts: photon counts and first-photon resolution.
    events = int(options["reference_events"])
    event_rows, resolution_rel = [], []
    for i, (z, theta, p) in enumerate(REFERENCE_CONTEXTS):
        cz, ct, cp = (np.full(events, v) for v in (z, theta, p))
        sim, sim2 = (simulate_at(cz, ct, cp, sim_cfg, rng) for _ in range(2))
        counts, event, dt = surrogate.simulate_events(np.stack([cz, ct, cp], 1), seed=seed + i)
        first_sim = _first_photon(sim.n_photons, sim.photon_event, sim.dt, k_min)
        first_sim2 = _first_photon(sim2.n_photons, sim2.photon_event, sim2.dt, k_min)
        first_model = _first_photon(counts, event, dt[:, 0], k_min)
        # Resolution = half the 16-84 % range: robust to the rare early outlier that
        # dominates a standard deviation (both are reported).
        s_sim, s_sim2, s_model = width68(first_sim), width68(first_sim2), width68(first_model)
        rel = abs(s_model - s_sim) / s_sim
        resolution_rel.append(rel)
        event_rows.append(
            {
                "z": z,
                "theta": theta,
                "p": p,
                "mean_N_sim": float(sim.n_photons.mean()),
                "mean_N_sim2": float(sim2.n_photons.mean()),
                "mean_N_model": float(counts.mean()),
                "std_N_sim": float(sim.n_photons.std()),
                "std_N_sim2": float(sim2.n_photons.std()),
                "std_N_model": float(counts.std()),
                # The whole count distribution: W1 [photons] to sim, beside sim2's.
                "w1_N_model": wasserstein1(sim.n_photons, counts),
                "w1_N_sim2": wasserstein1(sim.n_photons, sim2.n_photons),
                "first_res_sim": float(s_sim),
                "first_res_sim2": float(s_sim2),
                "first_res_model": float(s_model),
                "first_std_sim": float(np.std(first_sim)),
                "first_std_model": float(np.std(first_model)),
                "first_res_rel_diff": float(rel),
                "first_res_rel_diff_baseline": float(abs(s_sim2 - s_sim) / s_sim),
            }
        )
        tag = f"z={z:+.0f}mm θ={np.degrees(theta):.0f}° p={p:g}GeV"
        figures.append(
            (
                f"photon count per event, {tag}",
                plot_hist_compare(
                    sim.n_photons,
                    counts,
                    ("simulation", "surrogate"),
                    figures_dir / f"count_{i}.png",
                    bins=40,
                    xlabel="photons per event",
                ),
            )
        )
        figures.append(
            (
                f"first-photon Δt (events with ≥ {k_min} photons), {tag}",
                plot_hist_compare(
                    first_sim,
                    first_model,
                    ("simulation", "surrogate"),
                    figures_dir / f"first_{i}.png",
                    bins=40,
                    xlabel="first-photon Δt [ns]",
                ),
            )
        )

    closure_rows, closure_summary = closure(
        surrogate, sim_cfg, int(options["closure_events"]), seed, min_photons=k_min
    )
    metrics: dict[str, Any] = dict(result.summary) | closure_summary
    metrics["first_photon_resolution_rel_diff_max"] = float(max(resolution_rel))
    metrics["rows_evaluated"] = len(rows)
    return write_report(
        out_dir,
        "KLM timing surrogate: validation against the simulator",
        metrics,
        tables=[
            ("per context bin", result.rows),
            ("whole events at reference contexts", event_rows),
            ("fast simulation through the reader: fastsim vs simulator", closure_rows),
        ],
        figures=figures,
        targets=TARGETS,
        sections=sections,
    )
