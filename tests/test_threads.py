"""The threading policy: threads from the CPUs a job really has, passive waiting, user wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from detlearn._threads import THREAD_VARIABLES, usable_cpus

PROBE = (
    "import os, detlearn, torch, numba; "
    "print(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, os.environ['OMP_WAIT_POLICY'])"
)


def _run(env_extra: dict[str, str], cpus: set[int]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARIABLES, "OMP_WAIT_POLICY")}
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
