"""The threading policy: compute threads fitted to the CPUs a process really has, now.

torch, numba and onnxruntime run thread pools whose threads spin while they wait for each other.
On a shared machine (a login node, a CI runner, a batch slot beside another job) a spinning
thread that has lost its core makes the others wait for it, and the work collapses far below
the CPU share it still has (measured: 4.4x slower for 2x less CPU, 41x beside another
training). Pools that sleep instead cost a wake-up per parallel operation, which on 2 idle cores
made KLM training steps 30 % and sampling 10-20 % slower. So, before torch or numba start their
pools, :func:`apply` sets

- threads from the CPUs the process may use (:func:`usable_cpus`: its affinity mask, bounded
  by a cgroup CPU quota, as SLURM and containers set them), not ``os.cpu_count()``:
  ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``NUMBA_NUM_THREADS``;
- torch's own OpenMP runtime (loaded here, ahead of torch) keeps libgomp's spinning, and
  :func:`adapt`, called once per block or batch of detlearn's long torch work, fits torch's
  thread count to the CPUs that are free now (:class:`Adaptive`): one thread beside a busy
  process on 2 cores, so that no thread waits for a teammate without a core, and both again
  once the other process is gone. LightGBM, which links ``libgomp.so.1``, finds this copy
  already loaded; its boosting and onnxruntime's sessions follow the same count;
- ``OMP_WAIT_POLICY=PASSIVE`` for the other OpenMP runtimes (numba's and scikit-learn's own
  copies), whose parallel regions are few and long enough that sleeping costs nothing, and for
  the processes this one starts.

A variable the user has set wins: a user's ``OMP_NUM_THREADS`` sets the other two as well and
fixes the thread count (no adapting, every runtime sleeping), and a user's ``OMP_WAIT_POLICY``
or ``GOMP_SPINCOUNT`` is every runtime's policy. ``detlearn``'s top-level import applies it,
so the CLI and any ``import detlearn.<module>`` run under it; a user who imported torch first
keeps torch's own pool, which :func:`apply` then lowers with ``torch.set_num_threads`` only if
it exceeds the usable CPUs and ``OMP_NUM_THREADS`` was not set.

Example:
    >>> usable_cpus() >= 1
    True
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "FILLED",
    "POLICY_VARIABLES",
    "THREAD_VARIABLES",
    "Adaptive",
    "adapt",
    "adapting",
    "apply",
    "idle_seconds",
    "usable_cpus",
    "usable_memory",
]

#: The thread-count variables :func:`apply` fills in when unset.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

_CGROUP = Path("/sys/fs/cgroup")
_STAT = Path("/proc/stat")
_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _cgroup_quota(root: Path = _CGROUP) -> float | None:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max``, or v1 ``cfs_quota_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = _CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, bounded by a cgroup CPU quota
    (rounded up: a 1.5-CPU quota runs two threads at 75 %)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def usable_memory(cgroup: Path = _CGROUP) -> int:
    """The memory this process may still take [bytes]: the kernel's ``MemAvailable``, bounded
    by a cgroup v2 limit less its current use (SLURM and containers set one)."""
    available = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available <= 0:
        available = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def idle_seconds(cpus: frozenset[int], stat: Path = _STAT) -> float:
    """Seconds the CPUs numbered ``cpus`` have spent idle since boot: the ``idle`` and
    ``iowait`` columns of their lines in ``/proc/stat``."""
    ticks = 0
    with stat.open() as lines:
        for line in lines:
            if not line.startswith("cpu"):
                break
            fields = line.split()
            if fields[0] != "cpu" and int(fields[0][3:]) in cpus:
                ticks += int(fields[4]) + int(fields[5])
    return ticks * _TICK_S


class Adaptive:
    """Compute threads fitted to the CPUs free now, re-measured every ``interval`` seconds.

    Over each window, the CPUs this process may use give its ``capacity``: its own CPU time
    plus their idle time, per wall second, i.e. the CPUs it had or could have had. The rest went
    to other processes, and a spinning thread pool larger than the capacity loses a core to
    them now and then, leaving its other threads waiting. So when the capacity falls below the
    thread count less 0.5, the count drops to the capacity rounded to nearest; it rises (up to
    ``usable``) once the capacity exceeds it by 0.75. With two CPUs and one busy process beside
    two threads, the capacity is ~4/3: one thread; beside one thread, ~1: it stays; alone, 2.

    ``clock``, ``cpu_time`` and ``idle`` (wall, this process's CPU, the CPUs' idle time [s])
    are injectable for tests; a forked child starts a fresh window.
    """

    def __init__(
        self,
        usable: int,
        interval: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        cpu_time: Callable[[], float] = time.process_time,
        idle: Callable[[], float] | None = None,
    ) -> None:
        if idle is None:
            idle = functools.partial(idle_seconds, frozenset(os.sched_getaffinity(0)))
        self.usable, self.threads, self.interval = usable, usable, interval
        self._clock, self._cpu_time, self._idle = clock, cpu_time, idle
        self._last: tuple[int, float, float, float] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> int:
        """The thread count for now, re-measured when the window is over."""
        now = self._clock()
        with self._lock:
            last = self._last
            if last is not None and last[0] == os.getpid() and now - last[1] < self.interval:
                return self.threads
            reading = (os.getpid(), now, self._cpu_time(), self._idle())
            if last is not None and last[0] == reading[0] and now > last[1]:
                capacity = (reading[2] - last[2] + reading[3] - last[3]) / (now - last[1])
                if capacity < self.threads - 0.5:
                    self.threads = max(1, round(capacity))
                elif capacity >= self.threads + 0.75:
                    self.threads = min(self.usable, round(capacity))
            self._last = reading
        return self.threads


_adaptive: Adaptive | None = None
# The variables apply() filled in (``NAME=value ...``), so that a child process that imports
# detlearn tells them from the user's and adapts its own threads.
FILLED = "DETLEARN_THREAD_DEFAULTS"
#: Every variable :func:`apply` sets: a process started without them gets the policy afresh.
POLICY_VARIABLES = (*THREAD_VARIABLES, "OMP_WAIT_POLICY", FILLED)


def adapting() -> bool:
    """Whether :func:`adapt` fits thread counts (else they are fixed, by the user or because
    the CPUs' idle time cannot be read), so that a pool may spin."""
    return _adaptive is not None


def adapt() -> int:
    """Fit torch's (and numba's) compute threads in the calling thread to the CPUs free now
    (:class:`Adaptive`) and return the count; with fixed counts (:func:`adapting` false), the
    ``OMP_NUM_THREADS`` in force. Between measurements it costs a clock read: call it once per
    block or batch of long work, in the thread that does it (OpenMP counts are per thread)."""
    if _adaptive is None:
        count = os.environ.get("OMP_NUM_THREADS", "")
        return int(count) if count.isdigit() and int(count) > 0 else usable_cpus()
    threads = _adaptive()
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    numba = sys.modules.get("numba")
    parallel = getattr(getattr(getattr(numba, "np", None), "ufunc", None), "parallel", None)
    if getattr(parallel, "_is_initialized", False) and numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def _torch_openmp() -> Path | None:
    """torch's own OpenMP runtime (``torch/lib/libgomp*.so*``), found without importing torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for lib in sorted(Path(folder, "lib").glob("libgomp*.so*")):
            return lib
    return None


def _start_adapting(cpus: int) -> Adaptive | None:
    """Load torch's OpenMP runtime now, with libgomp's own spinning, and return the
    :class:`Adaptive` that will size it; None where that cannot be done."""
    try:
        adaptive = Adaptive(cpus)
        adaptive._idle()  # /proc/stat is there and reads as expected
        lib = _torch_openmp()
        if lib is None:
            return None
        ctypes.CDLL(str(lib))  # reads the wait policy now, before apply sets PASSIVE
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return adaptive


def apply() -> None:
    """Set the threading policy (module docstring) for this process and the processes it
    starts."""
    global _adaptive
    # What a detlearn parent filled in is not the user's: this process sets its own.
    for item in os.environ.pop(FILLED, "").split():
        name, _, value = item.partition("=")
        if os.environ.get(name) == value:
            del os.environ[name]
    before = set(os.environ)
    cpus = usable_cpus()
    explicit = "OMP_NUM_THREADS" in os.environ
    policy = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if not (explicit or policy) and cpus > 1 and "torch" not in sys.modules:
        _adaptive = _start_adapting(cpus)
    if "GOMP_SPINCOUNT" not in os.environ:  # a user who tuned the spinning keeps it
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # A user's OMP_NUM_THREADS speaks for the other pools too (torch reads MKL_NUM_THREADS
    # before it).
    user = os.environ.get("OMP_NUM_THREADS", "")
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, user if user.isdigit() else str(cpus))
    os.environ[FILLED] = " ".join(f"{k}={v}" for k, v in os.environ.items() if k not in before)
    torch = sys.modules.get("torch")
    if torch is not None and not explicit and torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
