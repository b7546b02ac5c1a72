"""Claim: on 2 CPU cores the mass-grid recipe trains to its interpolation goal, and generates
>= 1 million (m_Φ,reco, m_ω,reco) pairs/s at a label.

The goal (issue: mass-grid validation): at every interior held-out grid point, |Δ mean| and
|Δ 68 % width| of both reconstructed masses within max(1 %, statistical floor) of the simulator,
the floor covering all 64 checks at once, as ``detlearn evaluate`` judges them.

Steps, timed: simulate the default 10 x 10 grid (``--events`` generated events per point), prepare
it with the recipe's config, train the recipe's default flow with its checkerboard holdout
(``--minutes`` wall-clock budget; the recipe's epochs and early stopping otherwise), then score
every held-out label with ``--samples`` draws (model, sim, sim2 each) and time
``Surrogate.sample`` of 10⁶ pairs at one held-out label. The goal is checked once, after
training; the time reported is the training wall time, with whether the goal was met.

Run: .venv/bin/python benchmarks/grid_interp.py [--events 100000] [--minutes 15] [--quick]
     [--epochs N] [--patience N] [--batch N] [--set JSON]   (overrides, for
     experiments; --set takes a config fragment, merged last, e.g.
     '{"model": {"flow": {"transforms": 6}}}')
     .venv/bin/python benchmarks/grid_interp.py --rate-only RUN   (generation rate only)
``--quick``: a 4 x 4 grid, one epoch, few samples: checks the script, measures nothing.
``--contended`` (with any of the above): the generation rate (the figure timed in this process
alone; the training goal is not a speed) is measured again beside one busy process, and both are
printed with their ratio (``_contention``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import _contention
import numpy as np
import torch

from detlearn.config import deep_merge, validate_config
from detlearn.families import train
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.recipes.mass_grid import config_from_options, simulate
from detlearn.recipes.mass_grid.evaluate import (
    OPTIONS,
    compare_at_label,
    heldout_labels,
    train_rows_at,
)
from detlearn.runs import Surrogate

TARGET_RATE = 1e6  # pairs/s


def generation_rate(s: Surrogate, label: np.ndarray, n: int, contended: bool = False) -> float:
    """Pairs/s of ``Surrogate.sample`` of n pairs at one label (best of two, after warm-up);
    with ``contended``, measured again beside a busy process (``_contention``)."""
    context = dict(zip(s.context_names, label, strict=True))
    s.sample(context, 1000, seed=0)  # warm-up

    def best_time() -> float:
        times = []
        for seed in range(2):
            t0 = time.perf_counter()
            s.sample(context, n, seed=seed)
            times.append(time.perf_counter() - t0)
        return min(times)

    def show(seconds: float) -> None:
        rate = n / seconds
        print(
            f"2-D generation at one label: {rate / 1e6:.3f} M pairs/s "
            f"(target >= {TARGET_RATE / 1e6:g}, ratio {rate / TARGET_RATE:.3f}); "
            f"load average {os.getloadavg()[0]:.1f}"
        )

    seconds = _contention.measure(
        best_time,
        figure=f"2-D generation at one label, {n:,} pairs",
        unit="M pairs/s",
        value=lambda seconds: n / seconds / 1e6,
        contended=contended,
        show=show,
    )
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per grid point")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget [min]")
    parser.add_argument("--epochs", type=int, default=None, help="override training.max_epochs")
    parser.add_argument("--patience", type=int, default=None, help="override training.patience")
    parser.add_argument("--batch", type=int, default=None, help="override training.batch_size")
    parser.add_argument(
        "--set", type=json.loads, default={}, help="config override as JSON (experiments)"
    )
    parser.add_argument("--samples", type=int, default=OPTIONS["samples"], help="per label")
    parser.add_argument("--out", type=Path, default=None, help="keep the run here")
    parser.add_argument("--quick", action="store_true", help="tiny grid: check the script runs")
    parser.add_argument(
        "--rate-only", type=Path, default=None, help="only time generation on this trained run"
    )
    _contention.add_flag(parser)
    args = parser.parse_args()
    if args.rate_only is not None:
        s = Surrogate.load(args.rate_only)
        sim_cfg = config_from_options(s.info.config.simulate)
        generation_rate(s, heldout_labels(s.info, sim_cfg)[0], 1_000_000, args.contended)
        return

    training = {
        "max_minutes": args.minutes,
        "max_epochs": args.epochs,
        "patience": args.patience,
        "batch_size": args.batch,
    }
    flags: dict = {"training": {k: v for k, v in training.items() if v is not None}}
    n_rate = 1_000_000
    if args.quick:
        flags["simulate"] = {
            "phi_points": 4,
            "omega_points": 4,
            "acceptance_max": 1.0,
            "acceptance_scale": 1.0,
        }
        flags["training"]["max_epochs"] = 1
        args.events, args.samples, n_rate = 300, 2000, 100_000
    overrides = deep_merge(flags, args.set)  # --set last: it may refine what a flag set
    out = args.out or Path(tempfile.mkdtemp(prefix="grid_interp_"))
    raw = deep_merge(get_recipe("mass-grid").default_config(), overrides)
    cfg = validate_config(deep_merge(raw, {"data": {"inputs": [str(out / "sim" / "*.root")]}}))
    # Other jobs on the same cores slow every step: the load average says how shared they were.
    print(
        f"torch threads: {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, out: {out}"
    )

    t0 = time.perf_counter()
    simulate(out / "sim", args.events, 0, cfg.simulate)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = prepare(cfg, out / "dataset", progress=False)
    t_prep = time.perf_counter() - t0
    print(f"simulate {t_sim:.1f} s, prepare {t_prep:.1f} s: {summary.rows:,} rows")

    t0 = time.perf_counter()
    train(cfg, out / "dataset", out / "run", progress=False)
    t_train = time.perf_counter() - t0
    epochs = len((out / "run" / "flow" / "history.csv").read_text().splitlines()) - 1

    s = Surrogate.load(out / "run")
    sim_cfg = config_from_options(cfg.simulate)
    labels = heldout_labels(s.info, sim_cfg)
    t0 = time.perf_counter()
    # Every held-out label of the checkerboard is interior: two checks each, judged at once.
    rows = [
        compare_at_label(s, sim_cfg, label, args.samples, train_rows=k, checks=2 * len(labels))[0]
        for label, k in zip(labels, train_rows_at(s.info, labels), strict=True)
    ]
    t_eval = time.perf_counter() - t0
    ok = all(r["pass_mean"] and r["pass_width"] for r in rows)
    sim2_ok = np.mean([r["pass_mean_sim2"] and r["pass_width_sim2"] for r in rows])
    print(
        f"train {t_train:.1f} s ({epochs} epochs, flow {cfg.model.flow.kind} "
        f"x{cfg.model.flow.transforms}, hidden {cfg.model.flow.hidden}); "
        f"evaluate {len(labels)} held-out labels x {args.samples:,} samples: {t_eval:.1f} s"
    )
    tol = float(OPTIONS["tolerance"])
    for stat in ("mean", "width"):
        for f in ("phi", "omega"):
            signed = np.array([r[f"{stat}_{f}"] for r in rows])
            err = np.abs(signed)
            base = np.abs([r[f"{stat}_{f}_sim2"] for r in rows])
            floor = np.array([r[f"{stat}_{f}_floor"] for r in rows])
            data = np.array([r.get(f"{stat}_{f}_data", np.nan) for r in rows])
            limit = np.maximum(tol, floor)
            print(
                f"  |Δ {stat:5s} {f:5s}| max {100 * err.max():6.2f} %  median "
                f"{100 * np.median(err):5.2f} %  (sim2 max {100 * base.max():5.2f} %, "
                f"floor max {100 * floor.max():5.2f} %), points passing "
                f"{np.mean(err <= limit):.0%}; the training rows at a "
                f"label pin it to {100 * np.median(data):.2f} % (median)"
            )
            for k in np.flatnonzero(err > limit):
                print(
                    f"    misses at ({labels[k][0]:g}, {labels[k][1]:g}) GeV: "
                    f"{100 * signed[k]:+.2f} % (limit {100 * limit[k]:.2f} %)"
                )
    verdict = "met" if ok else "NOT met"
    print(
        f"goal {verdict} after {t_train:.1f} s of training (budget {args.minutes:g} min); "
        f"sim2 judged alike passes at {sim2_ok:.0%} of the points"
    )

    rate = generation_rate(s, labels[0], n_rate, args.contended)
    (out / "benchmark.json").write_text(
        json.dumps(
            {
                "train_s": t_train,
                "epochs": epochs,
                "goal_met": ok,
                "rate": rate,
                "rows": summary.rows,
                "events_per_point": args.events,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
