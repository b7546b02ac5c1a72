"""Timing helpers every benchmark script shares: the best of repeated runs, and the load."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def best_of(fn: Callable[[], T], repeat: int = 3) -> tuple[float, float, T]:
    """Best wall-clock seconds, best CPU seconds and the result of ``fn()`` over ``repeat``
    calls (the best, not the mean: other processes only ever slow a run down)."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu, out


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how many cores other processes were taking."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
