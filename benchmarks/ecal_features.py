"""Claim: `hit_features` computes the LDMX-BDT-style features of >= 100,000 events/s with ~100
hits/event on 2 CPU cores (it runs on one).

Times, back to back in this process on the same random events (best of ``--repeat``; the load
average is printed beside the figures, as the machine may be shared):
  1. ``hit_features`` over all events in batches of ``--batch``, as a data loader calls it,
     with the default fixed ring radii and with per-layer radii (the LDMX R68 table x 1, 2, 3);
  2. the straightforward alternative on the first ``--loop-events`` events: a Python loop over
     events, each event's features from numpy on its own hits (pairwise distances within a
     layer for the isolation, the weighted sums for the axis fit), checked against the batch.

The hits: Poisson(``--hits``) per event; layers mostly near the front (Poisson(8), a fifth
uniform over the 34), x, y a 12 mm Gaussian core with a fifth of the hits 120 mm wide.

``--contended``: the main figure (1. with per-layer radii) is measured again beside one busy
process, and both are printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/ecal_features.py [--events 200000] [--batch 4096] [--hits 100]
     [--contended]
"""

from __future__ import annotations

import argparse
import itertools

import _contention
import _timing
import numpy as np

from detlearn.data.hit_features import (
    AXIS_MIN_Z_SPREAD,
    DEFAULT_RING_RADII,
    FEATURE_NAMES,
    ISOLATION_RADIUS,
    feature_matrix,
    hit_features,
)
from detlearn.recipes.ecal_veto.geometry import LAYER_Z, R68

TARGET = 100_000  # events per second
LAYERS = 34
MAIN = "per-layer radii R68 x (1, 2, 3)"  # the radii of the main figure


def batch(events: int, hits: float, seed: int = 0):
    """ECal-like hits [mm, MeV] on the LDMX v14 layer planes."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(hits, events)
    n = int(counts.sum())
    layer = np.minimum(rng.poisson(8.0, n), LAYERS - 1)
    spread = rng.random(n) < 0.2
    layer[spread] = rng.integers(0, LAYERS, spread.sum())
    x, y = rng.normal(0.0, 12.0, (2, n))
    wide = rng.random(n) < 0.2
    x[wide] *= 10.0
    y[wide] *= 10.0
    e = rng.exponential(3.0, n)
    return counts, x, y, LAYER_Z[layer], e, layer


def event_features(x, y, z, e, layer, radii) -> np.ndarray:
    """One event's features with numpy on its own hits (FEATURE_NAMES order)."""
    n = len(e)
    if n == 0:
        return np.zeros(len(FEATURE_NAMES))
    total = e.sum()
    w = e / total if total > 0 else np.zeros(n)
    xm, ym, zm, lm = w @ x, w @ y, w @ z, w @ layer
    dx, dy, dz = x - xm, y - ym, z - zm
    szz = w @ (dz * dz)
    sx, sy = (
        ((w @ (dx * dz)) / szz, (w @ (dy * dz)) / szz) if szz > AXIS_MIN_Z_SPREAD**2 else (0, 0)
    )
    r2 = (dx - sx * dz) ** 2 + (dy - sy * dz) ** 2
    ring = (r2[:, None] >= radii[layer] ** 2).sum(axis=1)
    rings = np.bincount(ring, weights=e, minlength=4)
    same = layer[:, None] == layer[None, :]
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    near = (same & (d2 <= ISOLATION_RADIUS**2)).sum(axis=1) - 1
    return np.array([
        n, total, e[layer >= 20].sum(), e.max(), w @ np.hypot(dx, dy), np.sqrt(w @ (dx * dx)),
        np.sqrt(w @ (dy * dy)), layer.mean(), np.sqrt(w @ (layer - lm) ** 2), layer.max(),
        e[near == 0].sum(), *rings, rings[1:].sum() / total if total > 0 else 0.0,
        len(np.unique(layer)),
    ])  # fmt: skip


def event_loop(counts, x, y, z, e, layer, radii) -> np.ndarray:
    offsets = np.r_[0, np.cumsum(counts)]
    out = np.empty((len(counts), len(FEATURE_NAMES)))
    for i in range(len(counts)):
        s = slice(offsets[i], offsets[i + 1])
        out[i] = event_features(x[s], y[s], z[s], e[s], layer[s], radii)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=4096, help="events per hit_features call")
    parser.add_argument("--hits", type=float, default=100.0, help="mean hits per event")
    parser.add_argument("--loop-events", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    _contention.add_flag(parser)
    args = parser.parse_args()
    counts, x, y, z, e, layer = batch(args.events, args.hits)
    offsets = np.r_[0, np.cumsum(counts)]
    bounds = [*range(0, args.events, args.batch), args.events]
    batches = [
        (counts[a:b], *(v[offsets[a] : offsets[b]] for v in (x, y, z, e, layer)))
        for a, b in itertools.pairwise(bounds)
    ]
    print(
        f"{args.events:,} events in batches of {args.batch}, {counts.mean():.1f} hits/event; "
        f"load average {_timing.load_average()}"
    )
    radii = {
        f"fixed radii {DEFAULT_RING_RADII} mm": np.broadcast_to(DEFAULT_RING_RADII, (LAYERS, 3)),
        MAIN: np.outer(R68, [1.0, 2.0, 3.0]),
    }
    hit_features(*batches[0])  # compile (or load the cached kernel)
    rates = {}
    for name, table in radii.items():

        def every_batch(t=table):
            return _timing.best_of(
                lambda: [hit_features(*part, ring_radii=t) for part in batches], args.repeat
            )

        def show(result, name=name):
            rate = args.events / result[0]
            print(
                f"  hit_features, {name}: {result[0]:.3f} s = {rate:,.0f} events/s "
                f"({rate / TARGET:.2f}x the {TARGET:,}/s target); load {_timing.load_average()}"
            )

        seconds, _, _ = _contention.measure(
            every_batch,
            figure=f"hit_features, {name}",
            unit="events/s",
            value=lambda result: args.events / result[0],
            contended=args.contended and name == MAIN,
            show=show,
        )
        rates[name] = args.events / seconds

    n = min(args.loop_events, args.events)
    m = int(offsets[n])
    table = radii[MAIN]
    hits = [v[:m] for v in (x, y, z, e, layer)]
    seconds, _, looped = _timing.best_of(lambda: event_loop(counts[:n], *hits, table), 1)
    loop_rate = n / seconds
    batched = feature_matrix(hit_features(counts[:n], *hits, ring_radii=table))
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-4)
    best = rates[MAIN]
    print(
        f"  per-event numpy loop, per-layer radii, {n:,} events: {loop_rate:,.0f} events/s "
        f"(same features); hit_features is {best / loop_rate:.0f}x faster; load {_timing.load_average()}"
    )


if __name__ == "__main__":
    main()
