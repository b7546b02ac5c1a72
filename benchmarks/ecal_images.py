"""Claim: `build_images` makes >= 200,000 events/s of 20x20x3 images from ~100 hits/event on
2 CPU cores.

Times, back to back in this process on the same random events (best of ``--repeat``; the load
average is printed beside the figures, as the machine may be shared):
  1. ``build_images`` (the compiled per-hit pass) over all events in batches of ``--batch``, as
     a data loader calls it, with 1 thread and with ``--threads`` threads, for the original's
     xyz layout (histogram, no normalization; then nearest lattice point with the original's
     (img + 0.1)/max) and for a 5-slice log-z ``z_split`` layout. (One batch of all events
     would time mostly the kernel mapping fresh pages for ~1 GB of images, slow on this VM);
  2. the straightforward alternative on the first ``--loop-events`` events: a Python loop with
     one ``numpy.histogramdd`` per event (3-D histogram, then its three projections), checked
     against the batch images.

``--contended``: the main figure (1. for the histogram xyz layout with ``--threads`` threads) is
measured again beside one busy process, and both are printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/ecal_images.py [--events 200000] [--batch 4096] [--hits 100]
     [--threads 2] [--contended]
"""

from __future__ import annotations

import argparse

import _contention
import _timing
import numpy as np

from detlearn.data.images import ImageSpec, bin_edges, build_images

TARGET = 200_000  # events per second
MAIN = "xyz 20x20x3, histogram"  # the layout of the main figure (with --threads threads)


def batch(events: int, hits: float, seed: int = 0):
    """ECal-like hits: a core around the axis, z over the v14 silicon layers [mm, MeV]."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(hits, events)
    n = int(counts.sum())
    x, y = rng.standard_cauchy((2, n)) * 15.0
    z = rng.uniform(247.6, 769.3, n)
    e = rng.exponential(1.0, n)
    return counts, x, y, z, e


def histogramdd_loop(spec: ImageSpec, counts, x, y, z, e) -> np.ndarray:
    """One numpy.histogramdd per event, the projections summed out of the 3-D histogram."""
    h = spec.shape[0]
    edges = [bin_edges(spec, axis, h) for axis in range(3)]
    offsets = np.r_[0, np.cumsum(counts)]
    out = np.empty((len(counts), 3, h, h), dtype=np.float32)
    for i in range(len(counts)):
        s = slice(offsets[i], offsets[i + 1])
        cube, _ = np.histogramdd(np.stack([x[s], y[s], z[s]], axis=1), bins=edges, weights=e[s])
        out[i] = np.stack([cube.sum(axis=2), cube.sum(axis=0), cube.sum(axis=1).T])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=4096, help="events per build_images call")
    parser.add_argument("--hits", type=float, default=100.0, help="mean hits per event")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loop-events", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    _contention.add_flag(parser)
    args = parser.parse_args()
    counts, x, y, z, e = batch(args.events, args.hits)
    offsets = np.r_[0, np.cumsum(counts)]
    batches = [
        (counts[a:b], *(v[offsets[a] : offsets[b]] for v in (x, y, z, e)))
        for a, b in zip(
            range(0, args.events, args.batch),
            [*range(args.batch, args.events, args.batch), args.events],
            strict=True,
        )
    ]
    print(
        f"{args.events:,} events in batches of {args.batch}, {counts.mean():.1f} hits/event; "
        f"load average {_timing.load_average()}"
    )

    def every_batch(spec: ImageSpec, threads: int) -> None:
        for part in batches:
            build_images(spec, *part, threads=threads)

    specs = {
        MAIN: ImageSpec(),
        "xyz 20x20x3, lattice + (img+0.1)/max": ImageSpec(
            assignment="lattice", normalization="offset_max"
        ),
        "z_split 20x20x5, log z": ImageSpec(
            layout="z_split", channels=5, z_binning="log", z_origin=230.0
        ),
    }
    for spec in specs.values():
        build_images(spec, counts[:10], *(v[: counts[:10].sum()] for v in (x, y, z, e)))
    rates = {}
    for name, spec in specs.items():
        for threads in sorted({1, args.threads}):

            def show(result, name=name, threads=threads):
                seconds, rate = result[0], args.events / result[0]
                print(
                    f"  build_images, {name}, {threads} thread(s): {seconds:.3f} s = "
                    f"{rate:,.0f} events/s ({rate / TARGET:.2f}x the 200,000/s target); "
                    f"load {_timing.load_average()}"
                )

            seconds, _, _ = _contention.measure(
                lambda s=spec, t=threads: _timing.best_of(lambda: every_batch(s, t), args.repeat),
                figure=f"build_images, {name}, {threads} thread(s)",
                unit="events/s",
                value=lambda result: args.events / result[0],
                contended=args.contended and (name, threads) == (MAIN, args.threads),
                show=show,
            )
            rates[name, threads] = args.events / seconds

    spec = specs[MAIN]
    n = min(args.loop_events, args.events)
    loop_counts = counts[:n]
    m = int(loop_counts.sum())
    loop_hits = [v[:m] for v in (x, y, z, e)]
    seconds, _, looped = _timing.best_of(lambda: histogramdd_loop(spec, loop_counts, *loop_hits), 1)
    loop_rate = n / seconds
    images, _ = build_images(spec, loop_counts, x[:m], y[:m], z[:m], e[:m])
    np.testing.assert_allclose(images, looped, rtol=1e-5, atol=1e-5)
    best = rates[MAIN, args.threads]
    print(
        f"  per-event numpy.histogramdd loop, xyz 20x20x3, {n:,} events: {loop_rate:,.0f} "
        f"events/s (same images); build_images with {args.threads} thread(s) is "
        f"{best / loop_rate:.0f}x faster"
    )


if __name__ == "__main__":
    main()
