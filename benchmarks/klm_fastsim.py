"""Claim: `detlearn fastsim` writes >= 1,000 KLM events/s (about 0.3 M photons/s) on 2 CPU cores,
sampling and ROOT writing included, printed beside the built-in simulator writing the same.

Trains a surrogate the way ``detlearn demo`` does, on a smaller sample (``--train-events``
events; or takes a trained klm-timing run with ``--run``), then times, back to back in this
process (best of ``--repeat``), writing ``--events`` events into a fresh folder:

  1. the simulator: ``detlearn simulate klm-timing`` (gun, energy deposit, photons, times,
     EDM4hep files);
  2. the fast simulation: ``detlearn fastsim RUN`` (contexts as the simulator draws them,
     photon count from the count model, photon times from the flow, the same files).

Prints events/s and detected photons/s of each and their ratio. The surrogate's cost is set by
the photons it samples, so its count model must be trained (an untrained one would draw any
N); the photons per event of both are printed side by side. The built-in simulator is itself a
parametrized fast simulation (~10 M photons/s in memory), not Geant4: both are bound by the
ROOT writer, and the surrogate's worth is against the full optical simulation it replaces.

``--contended``: the main figure (the fast simulation's events/s) is measured again beside one
busy process, and both are printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/klm_fastsim.py [--events 20000] [--run RUN_DIR]
     [--train-events 4000] [--contended]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from pathlib import Path

import _contention
import _timing
import uproot
from rich.console import Console

from detlearn.pipeline import run_recipe
from detlearn.recipes.klm_timing import fastsim, simulate
from detlearn.runs.surrogate import ContextRangeWarning

TARGET = 1000.0  # events/s, files written


def _photons(files: list[Path]) -> int:
    """Detected photons in the files: their hits less the primary's one hit per event."""
    total = 0
    for path in files:
        with uproot.open(path) as f:
            tree = f["events"]
            total += int(tree["nHcalBarrelHits"].array(library="np").sum()) - tree.num_entries
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events each writes")
    parser.add_argument("--run", type=Path, default=None, help="a trained klm-timing run")
    parser.add_argument("--train-events", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=2)
    _contention.add_flag(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="klm_fastsim_"))
    try:
        run = args.run
        if run is None:
            print(f"training a surrogate on {args.train_events} simulated events ...")
            overrides = {
                "model": {"count_max_epochs": 40},
                "training": {"max_epochs": 8},
                "evaluation": {"max_rows": 1000, "options": {"reference_events": 500}},
            }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ContextRangeWarning)
                run_recipe(
                    "klm-timing",
                    work / "train",
                    args.train_events,
                    seed=1,
                    overrides=overrides,
                    console=Console(quiet=True),
                )
            run = work / "train" / "run"
        warnings.simplefilter("ignore", ContextRangeWarning)

        def simulator() -> list[Path]:
            shutil.rmtree(work / "sim", ignore_errors=True)
            return simulate(work / "sim", args.events, seed=2)

        def fast() -> list[Path]:
            shutil.rmtree(work / "fast", ignore_errors=True)
            return fastsim(run, work / "fast", events=args.events, seed=2)

        sim_s, _, sim_files = _timing.best_of(simulator, args.repeat)
        sim_photons = _photons(sim_files)
        print(
            f"simulator: {args.events:,} events, {sim_photons:,} photons in {sim_s:.2f} s = "
            f"{args.events / sim_s:,.0f} events/s, {sim_photons / sim_s / 1e6:.2f} M photons/s "
            f"({sim_photons / args.events:.0f} photons/event)"
        )
        speed = {}

        def show(result: tuple[float, float, list[Path]]) -> None:
            seconds, _, files = result
            photons = _photons(files)
            speed["fast"] = args.events / seconds
            print(
                f"fastsim: {args.events:,} events, {photons:,} photons in {seconds:.2f} s = "
                f"{args.events / seconds:,.0f} events/s, {photons / seconds / 1e6:.2f} M "
                f"photons/s ({photons / args.events:.0f} photons/event); "
                f"{args.events / seconds / (args.events / sim_s):.2f}x the simulator's events/s, "
                f"{args.events / seconds / TARGET:.2f}x the {TARGET:,.0f} events/s target"
            )

        _contention.measure(
            lambda: _timing.best_of(fast, args.repeat),
            figure="fastsim, events written",
            unit="events/s",
            value=lambda result: args.events / result[0],
            contended=args.contended,
            show=show,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average: {_timing.load_average()}")


if __name__ == "__main__":
    main()
