from __future__ import annotations

import operator

import pytest

from detlearn.config import ExecutorConfig, SlurmConfig
from detlearn.parallel import InlineExecutor, executor, slurm_cluster


def test_inline_executor_carries_exceptions():
    fut = InlineExecutor().submit(operator.truediv, 1, 0)
    with pytest.raises(ZeroDivisionError):
        fut.result()


def test_local_process_pool_runs_tasks():
    with executor(ExecutorConfig(kind="local", workers=2)) as ex:
        assert [f.result() for f in [ex.submit(pow, 2, k) for k in range(5)]] == [1, 2, 4, 8, 16]


def test_dask_local_cluster_runs_tasks():
    pytest.importorskip("distributed", reason="dask extra not installed")
    with executor(ExecutorConfig(kind="dask", workers=1)) as ex:
        assert ex.submit(operator.add, 2, 3).result() == 5


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
