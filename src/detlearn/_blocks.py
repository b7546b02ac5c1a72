"""Seeded threaded blocks: the same random numbers on any number of threads.

A simulator or a fit splits its rows into fixed blocks; with a generator, each block gets its
own child spawned from it. The blocks and their generators depend only on the row count, the
block size and the generator, so the result is the same on one thread or many. numpy and the
compiled kernels release the GIL in their heavy loops, so threads run in parallel.

Example:
    >>> parts = map_threads(lambda b: b[1].random(b[0].stop - b[0].start),
    ...                     seeded_blocks(5, 2, np.random.default_rng(0)), threads=2)
    >>> [len(p) for p in parts]
    [2, 2, 1]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

__all__ = ["Joined", "in_blocks", "map_threads", "seeded_blocks"]

T = TypeVar("T")
R = TypeVar("R")


def seeded_blocks(
    n: int, size: int, rng: np.random.Generator | None = None
) -> list[tuple[Any, ...]]:
    """The fixed blocks of ``n`` rows of ``size`` rows each: ``(rows,)``, or ``(rows, child)``
    with a generator spawned from ``rng`` per block. At least one (possibly empty) block."""
    slices = [slice(i, min(i + size, n)) for i in range(0, n, size)] or [slice(0, 0)]
    if rng is None:
        return [(rows,) for rows in slices]
    return list(zip(slices, rng.spawn(len(slices)), strict=True))


def map_threads(fn: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """``[fn(item) for item in items]``, on ``threads`` threads (in this thread if 1)."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


class Joined:
    """Arrays of ``n`` rows filled block by block, from any thread (:meth:`put`)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrays: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def put(self, rows: slice, part: Mapping[str, np.ndarray]) -> None:
        """Copy one block's arrays to their rows (the first block allocates the output)."""
        with self._lock:
            if not self.arrays:
                self.arrays.update(
                    {k: np.empty((self.n, *v.shape[1:]), v.dtype) for k, v in part.items()}
                )
        for key, value in part.items():
            self.arrays[key][rows] = value


def in_blocks(
    n: int,
    size: int,
    work: Callable[..., Mapping[str, np.ndarray]],
    threads: int,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """``work(rows[, child_rng])`` over the :func:`seeded_blocks` of ``n`` rows, each returning
    arrays of its block's rows, joined into arrays of ``n`` rows. Each block is copied into the
    output as soon as it is done, while it is still in cache."""
    out = Joined(n)
    map_threads(lambda block: out.put(block[0], work(*block)), seeded_blocks(n, size, rng), threads)
    return out.arrays
