"""A benchmark's main figure measured idle and then beside one competing busy process.

The machines detlearn runs on are often shared: two cores, with another job on one of them.
A thread pool that spins collapses there far below the CPU share it still has, so every script
in ``benchmarks/`` takes ``--contended`` (:func:`add_flag`), which measures its main figure
twice, back to back in the same process, through :func:`measure`: idle, then while
:func:`busy_process` keeps one other process spinning on a core. It prints one comparison line
(:class:`Comparison`, format parsed back by :func:`parse` for ``run_all.py``'s summary table):

    contended: <figure>: idle <x> <unit>, contended <y> <unit>; <ratio kind> <r> (target ...):
    met|NOT met|n/a; busy process <c> core; load average <a> -> <b>

all on one line. The ratio is always the contended speed as a fraction of the idle speed:
contended/idle for a throughput, idle/contended for a time. With one of two cores taken, the
fair share is 1/2; the target is 1/2.3, a little below it. The busy process's CPU share tells
whether the comparison was the one intended: below 1, still other processes were competing.

Use, in a script (run from ``benchmarks/``, so the module imports by its name):

    import _contention
    _contention.add_flag(parser)
    ...
    seconds = _contention.measure(
        lambda: best_of(work, 3), value=lambda s: n / s, figure="work", unit="items/s",
        contended=args.contended, show=lambda s: print(f"work: {n / s:,.0f} items/s"))
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# Every benchmark imports this module before torch (it sorts first): detlearn's threading
# policy (passive OpenMP waiting, threads from the usable CPUs) must be set before torch's
# OpenMP runtime starts, as `import detlearn` does for the CLI and a user's script.
import detlearn  # noqa: F401

T = TypeVar("T")

TARGET = 1 / 2.3  # contended speed / idle speed
FAIR_SHARE = 1 / 2  # one of two cores taken
PREFIX = "contended: "
RATIO_KINDS = ("contended/idle throughput", "idle/contended time")

# What the spinner runs. It checks every ~30 ms whether its parent is still the benchmark: a
# benchmark killed outright (run_all.py's --timeout, SIGKILL) never reaches its `finally`, and
# an orphaned spinner would burn a core of a shared machine until someone noticed.
_SPIN = """
import os, sys
parent = int(sys.argv[1])
print("spinning", flush=True)
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def add_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--contended`` to a benchmark's command line."""
    parser.add_argument(
        "--contended",
        action="store_true",
        help="measure the main figure again beside one busy process and print both "
        f"(target: contended >= 1/2.3 = {TARGET:.2f} of idle speed)",
    )


class Busy:
    """The competing process of :func:`busy_process`; ``cores`` is set when it stops."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.started = time.perf_counter()
        self.cpu_at_start: float | None = None  # its start-up (imports) is not competition
        self.cores: float | None = None  # CPU seconds it got / wall seconds it ran

    def cpu_seconds(self) -> float | None:
        """CPU time the spinner has had, from /proc (None elsewhere): if the machine is busier
        than one competitor, it gets less than a core and the contended figure flatters."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def busy_process() -> Iterator[Busy]:
    """One other Python process spinning on a core for the duration of the ``with`` block,
    already spinning when the block starts and stopped (terminated, then killed if need be)
    however it ends."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _SPIN, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # a Ctrl-C reaches it too: no second traceback
        text=True,
    )
    busy = Busy(proc)
    try:
        if proc.stdout.readline() != "spinning\n":  # started: the measurement meets it at once
            raise RuntimeError(f"the busy process did not start (exit status {proc.poll()})")
        busy.started, busy.cpu_at_start = time.perf_counter(), busy.cpu_seconds()
        yield busy
    finally:
        cpu = busy.cpu_seconds()
        wall = time.perf_counter() - busy.started
        if cpu is not None and busy.cpu_at_start is not None and wall > 0:
            busy.cores = (cpu - busy.cpu_at_start) / wall
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:#.3g}"


@dataclass
class Comparison:
    """One figure idle and contended; ``line()`` is what the scripts print."""

    figure: str
    unit: str
    idle: float
    contended: float
    lower_is_better: bool = False
    busy_cores: float | None = None
    load: tuple[float, float] | None = None  # 1-minute load average before idle, after contended

    @property
    def ratio(self) -> float:
        """Contended speed / idle speed (nan where a figure is not a positive number)."""
        num, den = (
            (self.idle, self.contended) if self.lower_is_better else (self.contended, self.idle)
        )
        # A time that never came (inf: a goal not reached) is a speed of 0.
        ratio = num / den if den > 0 else math.nan
        return ratio if math.isfinite(ratio) and ratio >= 0 else math.nan

    @property
    def verdict(self) -> str:
        if math.isnan(self.ratio):
            return "n/a"
        return "met" if self.ratio >= TARGET else "NOT met"

    def line(self) -> str:
        kind = RATIO_KINDS[self.lower_is_better]
        context = [
            f"busy process {self.busy_cores:.2f} core" if self.busy_cores is not None else "",
            f"load average {self.load[0]:.2f} -> {self.load[1]:.2f}" if self.load else "",
        ]
        return (
            f"{PREFIX}{self.figure}: idle {_number(self.idle)} {self.unit}, contended "
            f"{_number(self.contended)} {self.unit}; {kind} {self.ratio:.2f} (target >= 1/2.3 "
            f"= {TARGET:.2f}, fair share {FAIR_SHARE:.2f}): {self.verdict}"
            + "".join(f"; {c}" for c in context if c)
        )


def measure(
    fn: Callable[[], T],
    *,
    figure: str,
    unit: str,
    contended: bool,
    value: Callable[[T], float] = float,
    lower_is_better: bool = False,
    show: Callable[[T], None] | None = None,
) -> T:
    """Run ``fn()`` idle; with ``contended``, run it again inside :func:`busy_process` and
    print the comparison line of ``value(result)`` (in ``unit``). Returns the idle result, so
    that the script goes on exactly as without the flag.

    ``show(result)``, if given, prints the script's usual lines from the idle result before the
    contended run starts: they, and the load average they quote, stay about the idle run.
    """
    load_before = os.getloadavg()[0]
    idle = fn()
    if show is not None:
        show(idle)
    if not contended:
        return idle
    with busy_process() as busy:
        loaded = fn()
    comparison = Comparison(
        figure,
        unit,
        float(value(idle)),
        float(value(loaded)),
        lower_is_better,
        busy.cores,
        (load_before, os.getloadavg()[0]),
    )
    print(comparison.line(), flush=True)
    return idle


LINE = re.compile(
    rf"^{PREFIX}(?P<figure>.+?): idle (?P<idle>.+?), contended (?P<contended>.+?); "
    rf"(?P<kind>{'|'.join(map(re.escape, RATIO_KINDS))}) (?P<ratio>\S+) \([^)]*\): "
    r"(?P<verdict>met|NOT met|n/a)(?:; (?P<context>.*))?$",
    re.MULTILINE,
)


def parse(text: str) -> list[dict[str, str]]:
    """The comparison lines in a script's output, as dicts of LINE's groups."""
    return [m.groupdict(default="") for m in LINE.finditer(text)]
