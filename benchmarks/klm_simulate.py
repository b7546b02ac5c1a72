"""Claim: the built-in KLM simulator generates >= 10 million detected photons/s on 2 CPU cores.

Times, back to back in this process (best of ``--repeat``):
  1. ``simulate_events`` in memory (gun, energy deposit, photon candidates, thinning, times) with
     1 thread and with ``--threads`` threads; photons/s counts detected photons;
  2. ``write_edm4hep`` of one file's worth of events (photon hits/s, file size per photon);
  3. ``log_density`` at 10^5 (Δt, context) pairs over 2000 distinct contexts (table cached).

``--contended``: the main figure (1. with ``--threads`` threads) is measured again beside one busy
process, and both are printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/klm_simulate.py [--events 20000] [--threads 2] [--mode direct]
     [--contended]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _contention
import _timing
import numpy as np

from detlearn.recipes.klm_timing.density import _table, log_density
from detlearn.recipes.klm_timing.simulate import (
    KLMSimConfig,
    optics,
    simulate_events,
    write_edm4hep,
)

TARGET = 10e6  # detected photons per second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["direct", "wls"], default="direct")
    parser.add_argument("--repeat", type=int, default=3)
    _contention.add_flag(parser)
    args = parser.parse_args()
    cfg = KLMSimConfig(mode=args.mode)

    print(f"simulate_events: {args.events} events, mode {args.mode}")
    for threads in sorted({1, args.threads}):

        def simulate(t=threads):
            return _timing.best_of(
                lambda: simulate_events(args.events, cfg, np.random.default_rng(0), t),
                args.repeat,
            )

        def show(result, threads=threads):
            seconds, _, ev = result
            rate = len(ev.photon_time) / seconds
            print(
                f"  {threads} thread(s): {len(ev.photon_time):,} photons in {seconds:.2f} s = "
                f"{rate / 1e6:.2f} M photons/s ({rate / TARGET:.2f}x the 10 M/s target)"
            )

        _contention.measure(
            simulate,
            figure=f"simulate_events, mode {args.mode}, {threads} thread(s)",
            unit="M photons/s",
            value=lambda result: len(result[2].photon_time) / result[0] / 1e6,
            contended=args.contended and threads == args.threads,
            show=show,
        )

    ev = simulate_events(cfg.events_per_file, cfg, np.random.default_rng(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "klm.edm4hep.root"
        seconds, _, _ = _timing.best_of(lambda: write_edm4hep(ev, path, cfg), args.repeat)
        n = len(ev.photon_time)
        size = path.stat().st_size
    print(
        f"write_edm4hep: {cfg.events_per_file} events, {n:,} photon hits in {seconds:.2f} s = "
        f"{n / seconds / 1e6:.2f} M hits/s, {size / n:.0f} bytes/hit ({cfg.compression})"
    )

    t0 = time.perf_counter()
    _table(optics(cfg))
    build = time.perf_counter() - t0
    rng = np.random.default_rng(2)
    pick = rng.choice(len(ev), 2000, replace=False)
    z, theta, p = (np.repeat(a[pick], 50) for a in (ev.z_hit, ev.theta, ev.p))
    dt = rng.uniform(0.0, 40.0, len(z))
    seconds, _, _ = _timing.best_of(lambda: log_density(dt, z, theta, p, cfg), args.repeat)
    print(
        f"log_density: 10^5 pairs over 2000 contexts in {seconds:.2f} s "
        f"(one-off table build {build:.2f} s)"
    )


if __name__ == "__main__":
    main()
