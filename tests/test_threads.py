"""The threading policy: threads from the CPUs a job really has, passive waiting, user wins."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from detlearn._threads import POLICY_VARIABLES, Adaptive, idle_seconds, usable_cpus

PROBE = (
    "import os, detlearn, torch, numba; "
    "print(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, os.environ['OMP_WAIT_POLICY'])"
)


def _run(env_extra: dict[str, str], cpus: set[int]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        timeout=120,
    )
    return out.stdout.split()


def test_a_job_allowed_one_cpu_runs_one_compute_thread():
    assert _run({}, {min(os.sched_getaffinity(0))}) == ["1", "1", "PASSIVE"]


def test_a_job_allowed_every_cpu_runs_a_thread_on_each():
    cpus = os.sched_getaffinity(0)
    threads, numba_threads, _ = _run({}, cpus)
    assert int(threads) == int(numba_threads) == min(len(cpus), usable_cpus())


def test_the_users_own_thread_settings_win():
    # One thread where the policy would give one per CPU (two or more on CI).
    user = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}
    assert _run(user, os.sched_getaffinity(0)) == ["1", "1", "ACTIVE"]


@pytest.mark.parametrize(
    ("cpu_max", "bound"), [("150000 100000", 2), ("100000 100000", 1), ("max 100000", None)]
)
def test_a_cgroup_quota_bounds_the_threads(tmp_path, cpu_max, bound):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if bound is None else min(affinity, bound))


def test_a_cgroup_v1_quota_bounds_the_threads(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path) == 1


def test_the_simulators_default_to_one_thread_per_usable_cpu():
    probe = (
        "from detlearn.recipes.ecal_veto.simulate import EcalSimConfig; "
        "from detlearn.recipes.hcal_energy import HcalSimConfig; "
        "from detlearn.recipes.klm_timing.simulate import KLMSimConfig; "
        "print(EcalSimConfig().threads, HcalSimConfig().threads, KLMSimConfig().threads)"
    )
    one = {min(os.sched_getaffinity(0))}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, one),
        timeout=120,
    )
    assert out.stdout.split() == ["1", "1", "1"]


class _Machine:
    """A fake clock, this process's CPU time and the CPUs' idle time, advanced by hand."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.idle = 0.0

    def run(self, seconds: float, ours: float, idle: float) -> None:
        """``seconds`` of wall time in which this process used ``ours`` CPUs and ``idle`` CPUs
        lay idle."""
        self.wall += seconds
        self.cpu += ours * seconds
        self.idle += idle * seconds

    def adaptive(self, usable: int) -> Adaptive:
        return Adaptive(usable, 0.3, lambda: self.wall, lambda: self.cpu, lambda: self.idle)


@pytest.mark.parametrize(
    ("usable", "windows", "counts"),
    [
        # Two CPUs, one busy process arrives beside two spinning threads, stays, then leaves.
        (2, [(2.0, 0.0), (4 / 3, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 1.0)], [2, 1, 1, 1, 2]),
        # A process taking 0.4 of a CPU: both threads stay.
        (2, [(1.6, 0.0), (1.6, 0.0)], [2, 2]),
        # 16 CPUs, four busy processes: converges on the 12 left.
        (
            16,
            [(16 * 16 / 20, 0.0), (13 * 16 / 17, 0.0), (12.0, 0.0), (12.0, 0.0)],
            [13, 12, 12, 12],
        ),
        # A job waiting on its disk leaves its CPUs idle: it keeps its threads.
        (2, [(0.2, 1.8), (1.0, 1.0)], [2, 2]),
    ],
)
def test_the_thread_count_follows_the_cpus_free_now(usable, windows, counts):
    machine = _Machine()
    adaptive = machine.adaptive(usable)
    assert adaptive() == usable  # the first reading opens a window
    got = []
    for ours, idle in windows:
        machine.run(0.5, ours, idle)
        got.append(adaptive())
    assert got == counts


def test_between_measurements_the_count_costs_a_clock_read():
    machine = _Machine()
    reads = []
    adaptive = Adaptive(2, 0.3, lambda: machine.wall, lambda: reads.append(1) or machine.cpu,
                        lambda: machine.idle)  # fmt: skip
    adaptive()
    machine.run(0.1, 1.0, 0.0)  # within the window: not measured, even though contended
    assert adaptive() == 2 and len(reads) == 1
    machine.run(0.3, 1.0, 0.0)
    assert adaptive() == 1 and len(reads) == 2


def test_a_forked_child_opens_a_fresh_window(monkeypatch):
    machine = _Machine()
    adaptive = machine.adaptive(2)
    adaptive()
    machine.run(0.5, 2.0, 0.0)
    machine.cpu = 0.0  # a child's CPU time starts from zero
    monkeypatch.setattr(os, "getpid", lambda: -1)
    assert adaptive() == 2  # no negative capacity from the parent's reading
    machine.run(0.5, 2.0, 0.0)
    assert adaptive() == 2


def test_idle_time_is_read_for_the_usable_cpus_only(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 10 900 30 0 0 0 0 0\n"
        "cpu0 5 0 5 400 10 0 0 0 0 0\n"
        "cpu1 5 0 5 500 20 0 0 0 0 0\n"
        "intr 12345\n"
    )
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert idle_seconds(frozenset({1}), stat) == pytest.approx(520 * tick)
    assert idle_seconds(frozenset({0, 1}), stat) == pytest.approx(930 * tick)


def _spin_counts(env_extra: dict[str, str]) -> list[str]:
    """libgomp's spin count as each OpenMP runtime read it when it loaded: torch's (loaded by
    ``import detlearn``), then numba's."""
    probe = (
        "import detlearn, numba, numpy as np, torch; torch.ones(9).sum()\n"
        "f = numba.njit(parallel=True)(lambda x: x.sum()); f(np.ones(9))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}
    env.update(env_extra, OMP_DISPLAY_ENV="VERBOSE")
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
        timeout=120,
    )  # fmt: skip
    return re.findall(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="adapting needs two CPUs")
def test_torch_spins_and_the_other_openmp_runtimes_sleep():
    assert _spin_counts({}) == ["300000", "0"]
    # A user's thread count is fixed: nothing adapts it, so nothing may spin.
    assert _spin_counts({"OMP_NUM_THREADS": "2"}) == ["0", "0"]


CONTENDED = """
import os, subprocess, sys, time
import detlearn, torch
from detlearn._threads import adapt
spin = "import os\\nwhile True: pass"
busy = [subprocess.Popen([sys.executable, "-c", spin], preexec_fn=lambda c=c: os.sched_setaffinity(0, {c}))
        for c in sorted(os.sched_getaffinity(0))[:2]]
try:
    x = torch.randn(256, 256)
    start, counts = time.monotonic(), []
    while time.monotonic() - start < 3:
        counts.append(adapt())
        for _ in range(20):
            x = torch.tanh(x @ x.T / 256)
finally:
    for p in busy:
        p.kill()
print(counts[0], counts[-1], torch.get_num_threads())
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="contention needs two CPUs")
def test_beside_busy_processes_a_job_drops_to_one_thread():
    two = set(sorted(os.sched_getaffinity(0))[:2])
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", CONTENDED], env=env, capture_output=True, text=True, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, two), timeout=120,
    )  # fmt: skip
    assert out.stdout.split() == ["2", "1", "1"]
