"""The threading policy: threads from the CPUs this process may really use, waiting passively.

torch and numba run OpenMP thread pools whose threads spin while they wait for each other. On a
shared machine (a login node, a CI runner, a batch slot beside another job) a spinning thread
that has lost its core makes the others wait for it, and the work collapses far below the CPU
share it still has (measured: 4.4x slower for 2x less CPU, 41x beside another training). So,
before torch or numba start their pools, :func:`apply` sets

- ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning;
- ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``NUMBA_NUM_THREADS``: the CPUs the process may
  use (:func:`usable_cpus`: its affinity mask, bounded by a cgroup CPU quota, as SLURM and
  containers set them), not ``os.cpu_count()``.

A variable the user has set wins, and a user's ``OMP_NUM_THREADS`` sets the other two as well;
a user who set ``GOMP_SPINCOUNT`` (how long libgomp spins before it sleeps) keeps libgomp's
default policy with that spin count. Sleeping threads cost a wake-up per parallel operation
(tens of µs), so work is cut into blocks large enough to amortize it (KLM sampling: 2^20
samples per block, 12.4 M photons/s on 2 idle cores against 8.2 at 2^16; libgomp's spinning
pool reaches 13–17, but beside one busy process it collapses to 3–5 M/s where the sleeping
one keeps 8–9: ``benchmarks/klm_sample.py --contended``).
``detlearn``'s top-level import applies it, so the CLI and any ``import detlearn.<module>`` run
under it; a user who imported torch first keeps torch's own pool size, which :func:`apply` then
lowers with ``torch.set_num_threads`` only if it exceeds the usable CPUs and
``OMP_NUM_THREADS`` was not set.

Example:
    >>> usable_cpus() >= 1
    True
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = ["THREAD_VARIABLES", "apply", "usable_cpus", "usable_memory"]

#: The thread-count variables :func:`apply` fills in when unset.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

_CGROUP = Path("/sys/fs/cgroup")


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


def apply() -> None:
    """Set the threading policy (module docstring) for this process and the processes it
    starts."""
    cpus = usable_cpus()
    if "GOMP_SPINCOUNT" not in os.environ:  # a user who tuned the spinning keeps it
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    explicit = "OMP_NUM_THREADS" in os.environ
    # A user's OMP_NUM_THREADS speaks for the other pools too (torch reads MKL_NUM_THREADS
    # before it).
    user = os.environ.get("OMP_NUM_THREADS", "")
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, user if user.isdigit() else str(cpus))
    torch = sys.modules.get("torch")
    if torch is not None and not explicit and torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
