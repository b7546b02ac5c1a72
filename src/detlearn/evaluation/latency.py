"""Inference latency per row versus batch size, for any callable (torch, TorchScript, ONNX).

:func:`latency_per_row` times ``fn(inputs[:b])`` for every batch size b: a warm-up, then
``trials`` timed trials, each of enough back-to-back calls to last ≥ ``min_trial_s`` (so small
batches are not below the clock's resolution), and reports the median and the 16–84 % spread
of the per-row time in nanoseconds. :func:`plot_latency` draws the curves (``timing.png``).

Example:
    >>> import numpy as np
    >>> x = np.ones((1024, 4), np.float32)
    >>> rows = latency_per_row(lambda b: b.sum(1), x, [256, 1024], trials=3)
    >>> [r["batch"] for r in rows]
    [256, 1024]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["latency_per_row", "plot_latency"]


def latency_per_row(
    fn: Callable[[np.ndarray], Any],
    inputs: np.ndarray,
    batch_sizes: Sequence[int],
    *,
    trials: int = 7,
    warmup: int = 3,
    min_trial_s: float = 0.02,
) -> list[dict[str, float]]:
    """Per-row inference time [ns] of ``fn`` at each batch size.

    Args:
        fn: called with a [b, F] array (a view of ``inputs``; rows repeated when ``inputs``
            has fewer than b).
        inputs: representative rows, e.g. test-split inputs in physical units.
        batch_sizes: batch sizes to time.
        trials: timed trials per batch size; the median is reported.
        warmup: untimed calls before the trials (allocators, caches, lazy initialization).
        min_trial_s: each trial repeats the call until it lasts at least this long [s].

    Returns:
        One row per batch size: ``batch``, ``ns_per_row`` (median), ``ns_per_row_p16`` and
        ``ns_per_row_p84`` (spread over trials), ``calls_per_trial``.
    """
    rows = []
    for b in batch_sizes:
        reps = -(-b // len(inputs))
        x = np.ascontiguousarray(np.tile(inputs, (reps, 1))[:b] if reps > 1 else inputs[:b])
        for _ in range(warmup):
            fn(x)
        t0 = time.perf_counter()
        fn(x)
        single = max(time.perf_counter() - t0, 1e-7)
        calls = max(1, int(np.ceil(min_trial_s / single)))
        per_row = []
        for _ in range(trials):
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                fn(x)
            per_row.append((time.perf_counter_ns() - t0) / (calls * b))
        p16, p50, p84 = np.percentile(per_row, [16, 50, 84])
        rows.append(
            {
                "batch": int(b),
                "ns_per_row": float(p50),
                "ns_per_row_p16": float(p16),
                "ns_per_row_p84": float(p84),
                "calls_per_trial": calls,
            }
        )
    return rows


def plot_latency(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    target_ns: float | None = None,
) -> Path:
    """Per-row latency [ns] vs batch size (log-log), one curve per runtime, 16–84 % band."""
    from matplotlib.figure import Figure

    from detlearn.report import _label, _save, _styled

    @_styled
    def draw() -> Path:
        fig = Figure(figsize=(7, 5), layout="constrained")
        ax = fig.add_subplot()
        for name, rows in curves.items():
            b = [r["batch"] for r in rows]
            line = ax.plot(b, [r["ns_per_row"] for r in rows], marker="o", label=name)[0]
            ax.fill_between(
                b,
                [r["ns_per_row_p16"] for r in rows],
                [r["ns_per_row_p84"] for r in rows],
                color=line.get_color(),
                alpha=0.2,
            )
        if target_ns is not None:
            ax.axhline(target_ns, color="k", ls="--", lw=1, label=f"target {target_ns:g} ns")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size [rows]")
        ax.set_ylabel("time per row [ns]")
        ax.legend(fontsize=10)
        _label(ax)
        return _save(fig, path)

    return draw()
