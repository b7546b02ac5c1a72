"""Claim: the built-in LDMX ECal simulator writes >= 5,000 triggered events/s on 2 CPU cores,
generation and ROOT files together.

Times, back to back in this process (best of ``--repeat``; wall clock and the process's CPU
time, which tells what a shared machine hides; the load average is printed beside the figures):
  1. ``simulate_sample`` in memory, per sample (the lightest and the heaviest A′ and the
     photonuclear background: the signal's cost grows with the recoil energy, the
     background's with its products), with 1 thread and with ``--threads`` threads; events/s
     counts triggered (kept) events;
  2. ``write_events`` of one sample (LZ4, the default);
  3. the whole ``simulate`` (what ``detlearn simulate ecal-veto`` runs): 7 A′ masses and the
     background, ``--events`` triggered events each, every file written.

``--contended``: the main figure (3., the whole ``simulate``) is measured again beside one busy
process, and both are printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/ecal_simulate.py [--events 20000] [--threads 2] [--contended]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _contention
import _timing

from detlearn.recipes.ecal_veto import (
    DEFAULT_MASSES,
    EcalSimConfig,
    simulate,
    simulate_sample,
    write_events,
)

TARGET = 5_000  # triggered events per second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="triggered events per sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    _contention.add_flag(parser)
    args = parser.parse_args()
    n = args.events
    simulate_sample(1.0, 100, seed=0, cfg=EcalSimConfig(threads=1))  # compiled kernel loaded

    print(
        f"simulate_sample: {n:,} triggered events per sample; load average {_timing.load_average()}"
    )
    for mass in (DEFAULT_MASSES[0], DEFAULT_MASSES[-1], None):
        name = "background" if mass is None else f"A′ {mass:g} MeV"
        for threads in sorted({1, args.threads}):
            cfg = EcalSimConfig(threads=threads)
            seconds, cpu, events = _timing.best_of(
                lambda m=mass, c=cfg: simulate_sample(m, n, seed=1, cfg=c), args.repeat
            )
            rate = n / seconds
            hits = events.n_hits.mean()
            print(
                f"  {name}, {threads} thread(s): {seconds:.2f} s = {rate:,.0f} events/s "
                f"({rate / TARGET:.2f}x the 5,000/s target); CPU {cpu / n * 1e6:.0f} µs/event; "
                f"{hits:.1f} hits/event; load {_timing.load_average()}"
            )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "background.root"
        seconds, cpu, _ = _timing.best_of(lambda: write_events(events, path), args.repeat)
        print(
            f"write_events (lz4): {n:,} background events in {seconds:.2f} s = "
            f"{n / seconds:,.0f} events/s, {path.stat().st_size / n:.0f} bytes/event"
        )

    total = n * (len(DEFAULT_MASSES) + 1)
    options = {"threads": args.threads}

    def whole_simulate():
        with tempfile.TemporaryDirectory() as tmp:
            return _timing.best_of(lambda: simulate(tmp, n, seed=2, options=options), 1)

    def show(result):
        seconds, cpu, files = result
        rate = total / seconds
        print(
            f"simulate ({len(files)} files, {total:,} triggered events, {args.threads} threads): "
            f"{seconds:.2f} s = {rate:,.0f} events/s ({rate / TARGET:.2f}x the 5,000/s target); "
            f"CPU {cpu / total * 1e6:.0f} µs/event ({cpu / seconds:.2f} cores busy); "
            f"load {_timing.load_average()}"
        )

    _contention.measure(
        whole_simulate,
        figure=f"simulate, {total:,} triggered events, {args.threads} threads",
        unit="events/s",
        value=lambda result: total / result[0],
        contended=args.contended,
        show=show,
    )


if __name__ == "__main__":
    main()
