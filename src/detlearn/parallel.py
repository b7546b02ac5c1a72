"""Executors behind one ``concurrent.futures.Executor`` interface: local, dask, slurm.

- ``local``: ``workers`` tasks at a time, one in this process and the others in worker
  processes forked from a fork server (everything in-process when ``workers == 1``); see
  :class:`LocalExecutor`.
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
import multiprocessing.forkserver
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from detlearn.config import ExecutorConfig, SlurmConfig
from detlearn.errors import DetlearnError

__all__ = [
    "WORKER_RETRIES",
    "InlineExecutor",
    "LocalExecutor",
    "executor",
    "prestart",
    "slurm_cluster",
]


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


#: How often a task whose worker process died runs again in a fresh pool.
WORKER_RETRIES = 2


class LocalExecutor(Executor):
    """Runs ``workers`` tasks at a time: one in this process, the others in worker processes.

    A fresh Python process spends about a second importing numpy, awkward, uproot and pyarrow:
    the time of several work items. So this process, which has them imported already, works
    from the start while the worker processes get ready, and every task goes to whichever of
    them is free first. Workers are forked from a fork server (a clean, single-threaded
    process that imports the ``preload`` modules once and lives as long as this one), never
    from this process: they must not inherit its threads (torch, OpenMP, a progress bar). The
    first executor of a process waits for that server's imports; later ones do not. A worker
    exits as soon as this process ends, even when it is killed (see :func:`_exit_with`).

    A worker process that dies (killed by the out-of-memory killer or a preemption) breaks its
    pool: its task, and any other the pool held, runs again in a fresh pool, up to
    ``WORKER_RETRIES`` times each (dask retries a lost worker's tasks the same way). A task
    that still kills its worker fails with ``BrokenProcessPool``, and its worker place is not
    given back: the tasks left run in this process, where a crash would end the job.

    Args:
        workers: tasks at a time, this process included (at least 2).
        preload: modules the fork server imports for every worker (first executor only).

    Example:
        >>> with LocalExecutor(2) as ex:
        ...     [f.result() for f in [ex.submit(pow, 2, k) for k in range(4)]]
        [1, 2, 4, 8]
    """

    def __init__(self, workers: int, preload: Sequence[str] = ()) -> None:
        if workers < 2:
            raise ValueError(f"LocalExecutor needs at least 2 workers (got {workers})")
        self._workers, self._mp_context = workers - 1, _context(preload)
        self._processes = self._new_pool()
        self._replacing = threading.Lock()
        # One token per place a task can run: True a worker process, False this process.
        self._free: queue.SimpleQueue[bool] = queue.SimpleQueue()
        for token in [False] + [True] * self._workers:
            self._free.put(token)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="detlearn-local")

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=self._mp_context,
            initializer=_exit_with,
            initargs=(os.getpid(),),
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` on the first free worker."""
        return self._threads.submit(self._run, fn, args, kwargs)

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        in_worker = self._free.get()
        broken = False
        try:
            if not in_worker:
                return fn(*args, **kwargs)
            return self._in_worker(fn, args, kwargs)
        except BrokenProcessPool:
            # It killed its worker every time: the worker place is not given back, so the
            # tasks left run in this process, not fail too.
            broken = True
            raise
        finally:
            if not broken:
                self._free.put(in_worker)

    def _in_worker(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run the task in a worker process, in a fresh pool when a worker died."""
        retries = WORKER_RETRIES
        while True:
            pool = self._processes
            try:
                return pool.submit(fn, *args, **kwargs).result()
            except BrokenProcessPool:
                if retries == 0:
                    raise
                retries -= 1
                with self._replacing:  # the first task to see it replaces the broken pool
                    if self._processes is pool:
                        pool.shutdown(wait=False)
                        self._processes = self._new_pool()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; with ``wait``, return once the running ones are done."""
        self._threads.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._processes.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Leaving on an error (Ctrl-C included) finishes the running tasks, not the queued ones.
        self.shutdown(wait=True, cancel_futures=exc_type is not None)


def _exit_with(parent: int) -> None:
    """Worker initializer: end this worker process as soon as process ``parent`` (the one that
    opened the executor) ends, even by SIGKILL.

    A worker's own parent is the fork server, which lives as long as any worker does, and an
    idle worker waits for its next task forever: without this, a killed job left its workers,
    the fork server and multiprocessing's resource tracker running. Watched with a pidfd on
    Linux, else polled once a second; not on Windows (no fork server there).
    """
    if sys.platform == "win32":
        return
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:  # ended before this worker started
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (macOS, an old kernel): poll
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has ended
        else:
            while _alive(parent):
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="detlearn-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user (its pid reused)
        return True
    return True


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # __main__ too: a worker otherwise re-imports the main script (the CLI: typer, rich) itself.
    ctx.set_forkserver_preload(["__main__", *preload])
    return ctx


def prestart(cfg: ExecutorConfig, preload: Sequence[str] = ()) -> None:
    """Start the local workers' fork server now, without waiting for it.

    Its imports (about a second) then run while this process does other work before it opens
    :func:`executor` with the same ``preload`` (opening the inputs, checking finished shards:
    ~0.4 s for 100 files). Does nothing for dask or slurm, one worker, or where there is no
    fork server (Windows).
    """
    if cfg.kind != "local" or cfg.workers < 2:
        return
    if _context(preload).get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


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
def executor(cfg: ExecutorConfig, preload: Sequence[str] = ()) -> Iterator[Executor]:
    """Open the executor described by ``cfg``; it is shut down on exit.

    ``preload`` names modules local worker processes should import before their first task
    (see :class:`LocalExecutor`).
    """
    if cfg.kind == "local":
        if cfg.workers == 1:
            yield InlineExecutor()
            return
        with LocalExecutor(cfg.workers, preload) as pool:
            yield pool
        return
    # The slurm extra installs distributed too: name the extra that this executor needs.
    distributed = _require("distributed", "slurm" if cfg.kind == "slurm" else "dask")
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
