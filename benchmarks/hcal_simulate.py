"""Claim: the built-in HCAL simulator generates >= 1 million channels/s on 2 CPU cores.

Times, back to back in this process (best of ``--repeat``; wall clock, and the process's CPU time,
which tells what a shared, oversubscribed machine hides: threads scale when CPU time per channel
stays flat; the load average is printed beside the figures):
  1. ``generate_channels`` in memory (channel map, energy, photostatistics, pulse, pileup,
     pedestals, QIE digitization, noise terms) with 1 thread and with ``--threads`` threads;
  2. ``mahi_lite`` (2 passes of the exact NNLS) and ``m0`` on those channels;
  3. ``write_channels`` of one file's worth of channels, LZ4 (the default) and uncompressed;
  4. the whole ``simulate`` (what ``detlearn simulate hcal-energy`` runs): 1-3 for every file,
     file i written by a second thread while file i + 1 is generated, LZ4 and uncompressed.

``--contended``: the main figure (4., the whole ``simulate`` with LZ4) is measured again beside one
busy process, and both are printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/hcal_simulate.py [--channels 1000000] [--threads 2] [--contended]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _contention
import _timing
import numpy as np

from detlearn.recipes.hcal_energy import (
    HcalSimConfig,
    generate_channels,
    m0,
    mahi_lite,
    simulate,
    write_channels,
)

TARGET = 1e6  # channels per second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    _contention.add_flag(parser)
    args = parser.parse_args()
    cfg = HcalSimConfig()
    n = args.channels

    print(f"generate_channels: {n:,} channels; load average {_timing.load_average()}")
    for threads in sorted({1, args.threads}):
        seconds, cpu, ch = _timing.best_of(
            lambda t=threads: generate_channels(n, cfg, np.random.default_rng(0), t), args.repeat
        )
        rate = n / seconds
        print(
            f"  {threads} thread(s): {seconds:.2f} s = {rate / 1e6:.2f} M channels/s "
            f"({rate / TARGET:.2f}x the 1 M/s target); CPU {cpu / n * 1e9:.0f} ns/channel; "
            f"load {_timing.load_average()}"
        )

    print("mahi_lite (2 passes, chiSqSwitch 10):")
    for threads in sorted({1, args.threads}):
        seconds, cpu, _ = _timing.best_of(
            lambda t=threads: mahi_lite(ch.raw, ch.ped, ch.gain, ch.noise_adc, cfg, threads=t),
            args.repeat,
        )
        print(
            f"  {threads} thread(s): {n / seconds / 1e6:.2f} M channels/s; "
            f"CPU {cpu / n * 1e9:.0f} ns/channel"
        )
    seconds, cpu, _ = _timing.best_of(lambda: m0(ch.raw, ch.ped, ch.gain, cfg), args.repeat)
    print(f"m0: {n / seconds / 1e6:.2f} M channels/s; CPU {cpu / n * 1e9:.0f} ns/channel")

    per = min(cfg.channels_per_file, n)
    branches = {k: v[:per] for k, v in ch.branches().items()}
    branches["energy"] = branches["eraw"] = branches["genE"]
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("lz4", "none"):
            path = Path(tmp) / f"hcal_{codec}.root"
            seconds, cpu, _ = _timing.best_of(
                lambda c=codec, p=path: write_channels(branches, p, c), args.repeat
            )
            print(
                f"write_channels ({codec}): {per:,} channels, {per / seconds / 1e6:.2f} M/s, "
                f"CPU {cpu / per * 1e9:.0f} ns/channel, {path.stat().st_size / per:.0f} bytes/channel"
            )

    print(f"simulate (generate + MAHI-lite + M0 + ROOT files), {n:,} channels:")
    for codec in ("lz4", "none"):
        with tempfile.TemporaryDirectory() as tmp:
            options = {"threads": args.threads, "compression": codec}
            simulate(tmp, 1000, seed=0, options=options)  # compiled kernels loaded

            def whole_simulate(o=options, d=tmp):
                return _timing.best_of(lambda: simulate(d, n, seed=1, options=o), args.repeat)

            def show(result, codec=codec):
                seconds, cpu, _ = result
                rate = n / seconds
                print(
                    f"  {codec}: {seconds:.2f} s = {rate / 1e6:.2f} M channels/s "
                    f"({rate / TARGET:.2f}x the 1 M/s target); CPU {cpu / n * 1e9:.0f} "
                    f"ns/channel ({cpu / seconds:.2f} cores busy); load {_timing.load_average()}"
                )

            _contention.measure(
                whole_simulate,
                figure=f"simulate {codec}, {n:,} channels, {args.threads} threads",
                unit="M channels/s",
                value=lambda result: n / result[0] / 1e6,
                contended=args.contended and codec == "lz4",
                show=show,
            )


if __name__ == "__main__":
    main()
