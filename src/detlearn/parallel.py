"""Executors behind one ``concurrent.futures.Executor`` interface: local, dask, slurm.

- ``local``: a process pool of ``workers`` processes (in-process when ``workers == 1``).
- ``dask``: a ``distributed.Client`` on an existing scheduler (``scheduler: tcp://host:port``)
  or on a ``LocalCluster`` started for the job; requires ``pip install 'detlearn[dask]'``.
- ``slurm``: a ``dask_jobqueue.SLURMCluster`` scaled to ``slurm.jobs`` jobs; requires
  ``pip install 'detlearn[slurm]'``.

dask and dask-jobqueue are imported only when chosen.

Example:
    >>> from detlearn.config import ExecutorConfig
    >>> with executor(ExecutorConfig(kind="local", workers=1)) as ex:
    ...     ex.submit(pow, 2, 10).result()
    1024
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from detlearn.config import ExecutorConfig, SlurmConfig
from detlearn.errors import DetlearnError

__all__ = ["InlineExecutor", "executor", "slurm_cluster"]


class InlineExecutor(Executor):
    """Runs each task immediately in the calling process (one worker, no pickling)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` now; the returned future is already done."""
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # the future carries it, as a pool's would
            future.set_exception(err)
        return future


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DetlearnError(
            f"executor needs '{module}', which is not installed: pip install 'detlearn[{extra}]'"
        ) from None


def slurm_cluster(cfg: SlurmConfig) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` built from the config (not yet scaled)."""
    jobqueue = _require("dask_jobqueue", "slurm")
    return jobqueue.SLURMCluster(
        queue=cfg.queue,
        account=cfg.account,
        cores=cfg.cores,
        processes=cfg.processes,
        memory=cfg.memory,
        walltime=cfg.walltime,
        job_extra_directives=list(cfg.job_extra_directives),
    )


@contextlib.contextmanager
def executor(cfg: ExecutorConfig) -> Iterator[Executor]:
    """Open the executor described by ``cfg``; it is shut down on exit."""
    if cfg.kind == "local":
        if cfg.workers == 1:
            yield InlineExecutor()
            return
        # spawn: workers must not inherit the parent's torch/OpenMP thread state.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            yield pool
        return
    distributed = _require("distributed", "dask")
    with contextlib.ExitStack() as stack:
        if cfg.kind == "dask":
            if cfg.scheduler:
                client = stack.enter_context(distributed.Client(cfg.scheduler))
            else:
                cluster = stack.enter_context(
                    distributed.LocalCluster(
                        n_workers=cfg.workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                    )
                )
                client = stack.enter_context(distributed.Client(cluster))
        else:
            cluster = stack.enter_context(slurm_cluster(cfg.slurm))
            cluster.scale(jobs=cfg.slurm.jobs)
            client = stack.enter_context(distributed.Client(cluster))
        yield client.get_executor()
