"""Inference latency per row versus batch size, for any callable (torch, TorchScript, ONNX).

:func:`latency_curves` times ``fn(inputs[:b])`` for every runtime and batch size b: a warm-up,
then ``trials`` timed trials, each of enough back-to-back calls to last ≥ ``min_trial_s`` (so
small batches are not below the clock's resolution), runtimes interleaved over ``rounds``, and
reports the median and the 16–84 % spread of the per-row time in nanoseconds;
:func:`latency_per_row` is the one-runtime case. :func:`plot_latency` draws the curves
(``timing.png``). :func:`cpu_steal_s` reads the time the hypervisor took from a virtual
machine's CPUs: a latency measured while it is high measured the neighbours.

Example:
    >>> import numpy as np
    >>> x = np.ones((1024, 4), np.float32)
    >>> rows = latency_per_row(lambda b: b.sum(1), x, [256, 1024], trials=3)
    >>> [r["batch"] for r in rows]
    [256, 1024]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["cpu_steal_s", "latency_curves", "latency_per_row"]


def cpu_steal_s() -> float | None:
    """CPU time [s], all CPUs together, taken by the hypervisor since boot ("steal" in
    ``/proc/stat``: time a virtual CPU was ready to run but another guest had the physical
    one), or None where the kernel does not report it."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def latency_curves(
    fns: Mapping[str, Callable[[np.ndarray], Any]],
    inputs: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    trials: int = 7,
    rounds: int = 1,
    warmup: int = 3,
    min_trial_s: float = 0.02,
    settle_s: float = 0.0,
) -> dict[str, list[dict[str, float]]]:
    """Per-row inference time [ns] of several runtimes at each batch size, interleaved.

    Every round times each runtime in turn at every batch size (``trials`` trials each), so a
    slow spell of a shared machine hits all runtimes alike instead of one curve. Thread pools
    of the runtime timed before keep spinning for a while (onnxruntime's for ~0.1–0.5 s);
    ``settle_s`` waits that out before each runtime's turn.

    Args:
        fns: runtime name -> callable taking a [b, F] array (a view of ``inputs``; rows
            repeated when ``inputs`` has fewer than b).
        inputs: representative rows, e.g. test-split inputs in physical units.
        batch_sizes: batch sizes to time.
        trials: timed trials per batch size, runtime and round.
        rounds: passes over all batch sizes and runtimes; statistics pool every trial.
        warmup: untimed calls before the trials (allocators, caches, lazy initialization).
        min_trial_s: each trial repeats the call until it lasts at least this long [s].
        settle_s: pause before each runtime's turn [s].

    Returns:
        Runtime name -> one row per batch size: ``batch``, ``ns_per_row`` (median),
        ``ns_per_row_p16`` and ``ns_per_row_p84`` (spread over trials), ``calls_per_trial``,
        ``steal`` (the share of the machine's CPU time the hypervisor took during the
        trials, :func:`cpu_steal_s`; NaN where unknown).
    """
    batches = {}
    for b in batch_sizes:
        reps = -(-b // len(inputs))
        batches[b] = np.ascontiguousarray(
            np.concatenate([inputs] * reps)[:b] if reps > 1 else inputs[:b]
        )
    calls: dict[tuple[str, int], int] = {}
    per_row: dict[tuple[str, int], list[float]] = {(n, b): [] for n in fns for b in batch_sizes}
    # (stolen CPU seconds, wall seconds while steal was readable) per runtime and batch size
    steal: dict[tuple[str, int], list[float]] = {k: [0.0, 0.0] for k in per_row}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(settle_s)
            for b, x in batches.items():
                for _ in range(warmup):
                    fn(x)
                if (name, b) not in calls:
                    t0 = time.perf_counter()
                    fn(x)
                    single = max(time.perf_counter() - t0, 1e-7)
                    calls[name, b] = max(1, int(np.ceil(min_trial_s / single)))
                n_calls = calls[name, b]
                s0, t0 = cpu_steal_s(), time.perf_counter_ns()
                for _ in range(trials):
                    t1 = time.perf_counter_ns()
                    for _ in range(n_calls):
                        fn(x)
                    per_row[name, b].append((time.perf_counter_ns() - t1) / (n_calls * b))
                s1, wall = cpu_steal_s(), (time.perf_counter_ns() - t0) * 1e-9
                if s0 is not None and s1 is not None:
                    steal[name, b][0] += s1 - s0
                    steal[name, b][1] += wall
    curves: dict[str, list[dict[str, float]]] = {}
    for name in fns:
        curves[name] = []
        for b in batch_sizes:
            p16, p50, p84 = np.percentile(per_row[name, b], [16, 50, 84])
            curves[name].append(
                {
                    "batch": int(b),
                    "ns_per_row": float(p50),
                    "ns_per_row_p16": float(p16),
                    "ns_per_row_p84": float(p84),
                    "calls_per_trial": calls[name, b],
                    "steal": _steal_share(*steal[name, b]),
                }
            )
    return curves


def _steal_share(stolen_s: float, wall_s: float) -> float:
    """Stolen CPU time as a share of the machine's CPU time over ``wall_s`` (the wall time
    during which steal was readable; NaN if never)."""
    if wall_s <= 0:
        return math.nan
    return stolen_s / (wall_s * (os.cpu_count() or 1))


def latency_per_row(
    fn: Callable[[np.ndarray], Any],
    inputs: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    trials: int = 7,
    warmup: int = 3,
    min_trial_s: float = 0.02,
) -> list[dict[str, float]]:
    """:func:`latency_curves` of one runtime in one round."""
    return latency_curves(
        {"fn": fn}, inputs, batch_sizes, trials=trials, warmup=warmup, min_trial_s=min_trial_s
    )["fn"]
