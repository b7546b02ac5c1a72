from __future__ import annotations

import multiprocessing
import operator
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from detlearn.config import ExecutorConfig, SlurmConfig
from detlearn.parallel import InlineExecutor, LocalExecutor, executor, slurm_cluster


def _exit_in_a_worker_process(value: int) -> int:
    if multiprocessing.parent_process() is not None:
        os._exit(1)
    return value


def test_inline_executor_carries_exceptions():
    fut = InlineExecutor().submit(operator.truediv, 1, 0)
    with pytest.raises(ZeroDivisionError):
        fut.result()


def test_local_process_pool_runs_tasks():
    with executor(ExecutorConfig(kind="local", workers=2)) as ex:
        assert [f.result() for f in [ex.submit(pow, 2, k) for k in range(5)]] == [1, 2, 4, 8, 16]


def test_local_executor_starts_in_this_process_then_uses_a_worker():
    # The first task runs here at once (no worker start-up); the next goes to the worker.
    with LocalExecutor(2) as ex:
        pids = [f.result() for f in [ex.submit(os.getpid) for _ in range(2)]]
    assert pids[0] == os.getpid()
    assert pids[1] != os.getpid()


def test_local_executor_carries_exceptions_from_both_places():
    with LocalExecutor(2) as ex:
        futures = [ex.submit(operator.truediv, 1, 0) for _ in range(2)]
        for fut in futures:
            with pytest.raises(ZeroDivisionError):
                fut.result()


def test_local_executor_runs_the_rest_here_after_a_task_kills_every_worker():
    # The task retried in fresh pools (WORKER_RETRIES) kills each: it fails, the rest run here.
    with LocalExecutor(2) as ex:
        futures = [ex.submit(_exit_in_a_worker_process, k) for k in range(6)]
        died = [k for k, f in enumerate(futures) if isinstance(f.exception(), BrokenProcessPool)]
        assert len(died) == 1
        assert [f.result() for k, f in enumerate(futures) if k not in died] == [
            k for k in range(6) if k not in died
        ]


def _exit_in_the_first_worker(value: int, marker: str) -> tuple[int, int]:
    """Kills the worker process that runs it the first time (SIGKILL, as the OOM killer does);
    returns (value, how many times it ran in a worker)."""
    if multiprocessing.parent_process() is None:
        return value, 0
    with open(marker, "a") as f:
        f.write("x")
    runs = len(open(marker).read())
    if runs == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return value, runs


def test_a_task_whose_worker_is_killed_runs_again_in_a_fresh_worker(tmp_path):
    marker = str(tmp_path / "runs")
    with LocalExecutor(2) as ex:
        futures = [ex.submit(_exit_in_the_first_worker, k, marker) for k in range(6)]
        results = [f.result() for f in futures]  # none fails
    assert [value for value, _ in results] == list(range(6))
    assert 2 in [runs for _, runs in results]  # the killed task ran again in a new worker


def test_local_executor_drops_queued_tasks_when_the_block_fails():
    with pytest.raises(KeyboardInterrupt), LocalExecutor(2) as ex:
        futures = [ex.submit(time.sleep, 0.2) for _ in range(10)]
        raise KeyboardInterrupt
    assert sum(f.cancelled() for f in futures) >= 7


def test_dask_local_cluster_runs_tasks():
    pytest.importorskip("distributed", reason="dask extra not installed")
    with executor(ExecutorConfig(kind="dask", workers=1)) as ex:
        assert ex.submit(operator.add, 2, 3).result() == 5


def test_dask_executor_joins_a_running_scheduler_by_its_address():
    """executor.scheduler: tasks go to a cluster someone else started (tcp://host:port)."""
    distributed = pytest.importorskip("distributed", reason="dask extra not installed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        dashboard_address=None,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        with executor(ExecutorConfig(kind="dask", scheduler=address)) as ex:
            assert ex.submit(operator.mul, 6, 7).result() == 42
        # The executor left the cluster running for its owner.
        assert cluster.status.name == "running"


def test_slurm_job_script_carries_the_config():
    pytest.importorskip("dask_jobqueue", reason="slurm extra not installed")
    cfg = SlurmConfig(
        queue="short",
        account="eic",
        cores=8,
        memory="16GB",
        walltime="02:30:00",
        job_extra_directives=["--constraint=cpu"],
    )
    cluster = slurm_cluster(cfg)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in (
        "#SBATCH -p short",
        "#SBATCH -A eic",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH -t 02:30:00",
        "#SBATCH --constraint=cpu",
    ):
        assert line in script, script
    assert "--mem=15G" in script or "--mem=16G" in script


@pytest.mark.parametrize(
    ("kind", "missing", "extra"),
    [
        ("dask", "distributed", "dask"),
        ("slurm", "distributed", "slurm"),
        ("slurm", "dask_jobqueue", "slurm"),
    ],
)
def test_a_missing_extra_names_the_one_to_install(monkeypatch, kind, missing, extra):
    import sys

    from detlearn.errors import DetlearnError

    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    with (
        pytest.raises(
            DetlearnError, match=rf"needs '{missing}'.*pip install 'detlearn\[{extra}\]'"
        ),
        executor(ExecutorConfig(kind=kind, workers=1)),
    ):
        pass
