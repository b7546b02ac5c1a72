"""Progress of long work: a rich bar on a terminal, plain lines in a log (CI, SLURM, ``| tee``).

A progress display is interactive only where someone watches it: when stderr is a terminal.
Elsewhere a bar would write nothing useful to the log (or a mess of control codes), so the
work prints one plain line per tenth of the total, no closer than ``min_gap_s`` seconds apart
(quick work prints nothing), and at least one every ``plain_every_s`` seconds.

Example:
    >>> with progress(3, "preparing", min_gap_s=0) as advance:  # doctest: +SKIP
    ...     for _ in range(3):
    ...         advance()
    preparing: 1/3 (33 %) 0.0 s
    ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

__all__ = ["interactive", "plain_line", "progress", "track"]

T = TypeVar("T")


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal someone watches."""
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def plain_line(text: str, stream: TextIO | None = None) -> None:
    """One progress line in a log, flushed at once (a batch system buffers otherwise)."""
    stream = stream if stream is not None else sys.stderr
    print(text, file=stream, flush=True)


@contextmanager
def progress(
    total: int,
    description: str,
    enabled: bool = True,
    done: int = 0,
    plain_every_s: float = 30.0,
    min_gap_s: float = 2.0,
) -> Iterator[Callable[[], None]]:
    """Show the progress of ``total`` items (``done`` of them already done); yields the
    function to call once per finished item. Nothing is shown when not ``enabled``."""
    if not enabled:
        yield lambda: None
        return
    if interactive():
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=total, completed=done)
            yield lambda: bar.advance(task)
        return
    start, count = time.monotonic(), done
    step = max(1, total // 10)
    last = start

    def advance() -> None:
        nonlocal count, last
        count += 1
        now = time.monotonic()
        boundary = count % step == 0 or count == total
        if (boundary and now - last >= min_gap_s) or now - last >= plain_every_s:
            last = now
            share = 100 * count / total if total else 100.0
            plain_line(f"{description}: {count}/{total} ({share:.0f} %) {now - start:.1f} s")

    yield advance


def track(items: Sequence[T], description: str) -> Iterator[T]:
    """The ``items``, shown as :func:`progress` when there is more than one."""
    with progress(len(items), description, enabled=len(items) > 1) as advance:
        for item in items:
            yield item
            advance()
