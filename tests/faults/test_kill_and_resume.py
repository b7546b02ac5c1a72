"""Nothing lost: jobs killed with SIGKILL, disks that fill up, workers that die, and folders
that hold older files.

Every killed job runs as its own ``python -m detlearn.cli`` process (as a user runs it) and is
killed at a moment read off the file system: its first shard, checkpoint or output file. Then:
no file under a final name is incomplete (every ROOT file opens, every JSON file parses...),
no process of the job lives on, and the rerun gives what an uninterrupted run gives.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import conftest
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import uproot
import yaml
from conftest import flat_config, write_flat
from rich.console import Console
from safetensors.torch import load_file

from detlearn import training
from detlearn.cli import app
from detlearn.config import TrainingConfig, deep_merge
from detlearn.errors import DetlearnError
from detlearn.families import export_run, train
from detlearn.io import dataset
from detlearn.pipeline import run_recipe, simulate
from detlearn.prepare import prepare
from detlearn.recipes import load_config

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork servers are POSIX"),
    # The tiny klm run spans less of the simulator's range than fastsim draws.
    pytest.mark.filterwarnings("ignore::detlearn.runs.surrogate.ContextRangeWarning"),
]

CLI = [sys.executable, "-m", "detlearn.cli"]
#: How long a job may take to reach its kill point (its imports alone take seconds) [s].
DEADLINE = 180.0

# --- helpers -----------------------------------------------------------------------------


def _start(log: Path, *args: object) -> subprocess.Popen:
    """``detlearn *args`` as its own process; its output goes to ``log`` (a file, not a pipe:
    orphans of the job would hold a pipe open)."""
    with log.open("wb") as out:
        return subprocess.Popen([*CLI, *map(str, args)], stdout=out, stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path) -> dict[int, object]:
    """SIGKILL ``proc`` as soon as ``ready()``; fails where the job ended on its own first.
    Returns the processes it had started (see :func:`_family`), as they were at the kill."""
    deadline = time.monotonic() + DEADLINE
    while not ready():
        assert proc.poll() is None, f"the job ended before its kill point:\n{log.read_text()}"
        assert time.monotonic() < deadline, "the job never reached its kill point"
        time.sleep(0.01)
    family = _family(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before the kill landed"
    return family


def _count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def _final_files(folder: Path) -> list[Path]:
    """The files under final names (not ``.<name>.<random>.tmp``), each checked complete."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    for path in files:
        if path.suffix == ".root":
            with uproot.open(path) as f:
                for key in f.keys(cycle=False):
                    f[key]  # every object reads back
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".ckpt":
            torch.load(path, weights_only=True)
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(path))
    return files


def _temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp") if p.is_file())


def _family(pid: int) -> dict[int, object]:
    """The processes below ``pid`` (psutil handles, or pids from /proc without psutil)."""
    try:
        import psutil
    except ImportError:
        return {p: p for p in _proc_descendants(pid)}
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def _proc_descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        kids = [child for child, parent in parents.items() if parent == todo[-1]]
        todo.pop()
        found += kids
        todo += kids
    return found


def _running(proc: object) -> bool:
    try:
        import psutil
    except ImportError:
        stat = Path(f"/proc/{proc}/stat")
        return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_all_end(family: dict[int, object], timeout: float = 90.0) -> None:
    """Every process of ``family``, and every child any of them starts meanwhile, ends
    within ``timeout`` seconds (a fork server still importing forks its worker late)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid: p for pid, p in family.items() if _running(p)}
        for pid in list(alive):
            for child, handle in _family(pid).items():
                family.setdefault(child, handle)
        if not alive:
            return
        assert time.monotonic() < deadline, f"orphans of the killed job: {sorted(alive)}"
        time.sleep(0.2)


def _shards(root: Path) -> list[dict]:
    return json.loads((root / "manifest.json").read_text())["shards"]


# --- fixtures ------------------------------------------------------------------------------

KLM_TINY = deep_merge(conftest.KLM_TINY, {"simulate": {"events_per_file": 150}})


@pytest.fixture(scope="module")
def klm(tmp_path_factory):
    """A tiny klm-timing run (with its count model, as fastsim needs): simulate, prepare, train
    by the public functions ``detlearn demo`` calls."""
    out = tmp_path_factory.mktemp("klm")
    raw = deep_merge(
        {"recipe": "klm-timing"}, deep_merge(KLM_TINY, {"data": {"inputs": [str(out / "sim")]}})
    )
    (out / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(out / "run.yaml")
    simulate("klm-timing", out / "sim", 300, 1, cfg.simulate)
    prepare(cfg, out / "dataset", progress=False)
    train(cfg, out / "dataset", out / "run", progress=False)
    return out


# --- 1. prepare ----------------------------------------------------------------------------


def test_prepare_killed_twice_then_rerun_equals_uninterrupted_and_leaves_no_process(tmp_path):
    """Killed half-way with one worker, then killed again right after the resumed job's first
    new shard with two (the job's fork server still importing, its worker requested): the
    rerun reuses the finished shards and gives the uninterrupted run's manifest shard for
    shard, and no process of either job survives (the worker, fork server and resource
    tracker of a killed ``--workers 2`` job lived on: its worker waited for tasks forever)."""
    files = [str(write_flat(tmp_path / f"f{i}.root", n=2000, seed=i)) for i in range(2)]
    config = flat_config(tmp_path, files, step_size=40)  # 100 shards
    out, shards, log = tmp_path / "a", tmp_path / "a" / "shards", tmp_path / "log"

    first = _start(log, "prepare", config, "--out", out, "--quiet", "--workers", 1)
    _kill_when(first, lambda: _count(shards, "*.done.json") >= 50, log)
    done = _count(shards, "*.done.json")
    assert done < 100 and not (out / "manifest.json").exists()
    _final_files(out)

    second = _start(log, "prepare", config, "--out", out, "--quiet", "--workers", 2)
    family = _kill_when(second, lambda: _count(shards, "*.done.json") > done, log)
    assert family, "the job had started no fork server"
    assert not (out / "manifest.json").exists()
    _final_files(out)

    cfg = load_config(config)
    resumed = prepare(cfg, out, progress=False)
    assert resumed.skipped > done and resumed.shards == 100
    prepare(cfg, tmp_path / "b", progress=False)
    assert _shards(out) == _shards(tmp_path / "b")  # checksums, rows, entry ranges, sources
    assert not _temp_files(out)
    _assert_all_end(family)


# --- 2. train --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flat_dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flat")
    path = write_flat(tmp / "f.root", n=3000, seed=3)
    config = flat_config(tmp, [str(path)], step_size=1000)
    prepare(load_config(config), tmp / "ds", progress=False)
    return config, tmp / "ds"


TRAIN_SETS = [
    "--set=model.flow.transforms=1",
    "--set=model.flow.bins=4",
    "--set=model.flow.hidden=[8]",
    "--set=training.batch_size=100",
    "--set=training.max_epochs=10",
    "--set=training.patience=100",
    # Training noise: drawn from torch's generator, which the resumed run seeds afresh.
    "--set=model.flow.context_noise={p: 0.1}",
]


def test_train_killed_resumes_bit_for_bit_in_a_moved_folder(flat_dataset, tmp_path, runner):
    """``detlearn train`` into a folder holding an earlier run, killed after its first
    checkpoint: the folder is no run any more (``sample`` refuses it; the old run.json stayed
    beside new weights), and ``--resume`` of that folder moved elsewhere ends with the weights
    of an uninterrupted run, bit for bit (resumed epochs replayed epoch 0's shuffles and
    training noise, and a moved folder resumed from the original folder's best checkpoint,
    its best score lost)."""
    config, ds = flat_dataset
    run, log = tmp_path / "run", tmp_path / "log"
    old = runner.invoke(
        app,
        ["train", str(config), "-d", str(ds), "-o", str(run), "--quiet", *TRAIN_SETS,
         "--set=training.max_epochs=1", "--set=training.seed=7"],
    )  # fmt: skip
    assert old.exit_code == 0, old.output

    last = run / "flow" / "checkpoints" / "last.ckpt"
    started = time.time_ns()
    killed = _start(log, "train", config, "-d", ds, "-o", run, "--quiet", *TRAIN_SETS)
    _kill_when(killed, lambda: last.is_file() and last.stat().st_mtime_ns > started, log)
    assert not (run / "run.json").exists()
    _final_files(run)
    refused = runner.invoke(app, ["sample", str(run), "-c", "p=1", "-n", "10"])
    assert refused.exit_code == 2 and "not a detlearn run directory" in refused.output

    moved = tmp_path / "moved"
    shutil.move(run, moved)
    args = ["train", str(config), "-d", str(ds), "-o", str(moved), "--quiet", *TRAIN_SETS]
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    fresh = runner.invoke(app, [*args[:5], str(tmp_path / "fresh"), *args[6:]])
    assert fresh.exit_code == 0, fresh.output
    a, b = (load_file(r / "flow" / "model.safetensors") for r in (moved, tmp_path / "fresh"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = (moved / "flow" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 10  # every epoch once


# --- 3. simulate, export, fastsim ----------------------------------------------------------


def test_simulate_killed_leaves_only_whole_files_and_reruns(tmp_path, runner):
    """Killed while writing a file (a temp file beside finished ones): every ROOT file under
    a final name is whole, and the rerun into the same folder rewrites it all (its own files
    are not refused), its temp files removed."""
    out, log = tmp_path / "sim", tmp_path / "log"
    args = ["simulate", "klm-timing", "-o", out, "-n", 6000, "--seed", 2]
    sets = ["--set", "events_per_file=100"]
    killed = _start(log, *args, *sets)
    _kill_when(killed, lambda: _count(out, "*.root") >= 1 and _count(out, ".*.tmp") >= 1, log)
    for path in _final_files(out):
        assert path.suffix == ".root"
    assert _count(out, "*.root") < 60
    rerun = runner.invoke(app, [*map(str, args), *sets])
    assert rerun.exit_code == 0, rerun.output
    assert _count(out, "*.root") == 60 and not _temp_files(out)
    _final_files(out)


def test_export_killed_leaves_only_whole_files_and_reruns(klm, tmp_path):
    """Killed once its first graph is written: what lies under a final name is whole; the
    rerun into the same folder succeeds."""
    run, out, log = klm / "run", tmp_path / "export", tmp_path / "log"
    killed = _start(log, "export", run, "-o", out)
    _kill_when(killed, lambda: _count(out, "*.onnx") >= 1, log)
    _final_files(out)
    sidecar = export_run(run, out)
    assert sidecar and not _temp_files(out)
    assert {p.suffix for p in _final_files(out)} >= {".onnx", ".json"}


def test_fastsim_killed_leaves_only_whole_files_and_resumes(klm, tmp_path, runner):
    """Killed after its first file: the files under final names are whole, and the rerun
    keeps them (the same provenance) and writes the rest."""
    run, out, log = klm / "run", tmp_path / "fs", tmp_path / "log"
    args = ["fastsim", str(run), "-n", "1500", "-o", str(out), "--seed", "4"]
    killed = _start(log, *args)
    _kill_when(killed, lambda: _count(out, "*.root") >= 1, log)
    before = {p: p.stat().st_mtime_ns for p in _final_files(out)}
    assert 1 <= len(before) < 10
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert _count(out, "*.root") == 10
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # kept, not redone
    _final_files(out)


# --- 4. a full disk ------------------------------------------------------------------------


def _disk_fills(after: int) -> Callable[[Callable], Callable]:
    """A wrapper of a writer ``fn(obj, path_or_file, ...)`` that, from its ``after``-th call
    on, writes some bytes and raises ENOSPC, as a full disk does."""

    def wrap(fn: Callable) -> Callable:
        calls = [0]

        def write(obj: object, where: object, *args: object, **kwargs: object) -> object:
            calls[0] += 1
            if calls[0] <= after:
                return fn(obj, where, *args, **kwargs)
            if hasattr(where, "write"):
                where.write(b"PAR1 half")
            else:
                Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device")

        return write

    return wrap


def test_prepare_on_a_full_disk_is_one_line_leaves_no_half_shard_and_reruns(
    tmp_path, runner, monkeypatch
):
    path = write_flat(tmp_path / "f.root", n=1000)
    config = flat_config(tmp_path, [str(path)])  # 4 shards
    out = tmp_path / "ds"
    monkeypatch.setattr(dataset.pq, "write_table", _disk_fills(2)(pq.write_table))
    result = runner.invoke(app, ["prepare", str(config), "-o", str(out), "--quiet"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "disk full" in line and ".parquet" in line
    assert _count(out / "shards", "*.parquet") == 2 and not _temp_files(out)
    assert not (out / "manifest.json").exists()
    _final_files(out)
    monkeypatch.undo()
    rerun = prepare(load_config(config), out, progress=False)
    assert rerun.skipped == 2 and rerun.shards == 4


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_half_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)

    def data(n: int) -> dict[str, np.ndarray]:
        c = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        return {"target": np.exp(c + 0.3 * rng.standard_normal((n, 1))), "context": c}

    from detlearn.config import FlowConfig
    from detlearn.models import ConditionalFlow

    def flow() -> ConditionalFlow:
        torch.manual_seed(0)
        return ConditionalFlow(1, 1, FlowConfig(hidden=[8], transforms=1, bins=4), lower=[0.0])

    train_set, val_set = data(400), data(100)
    cfg = TrainingConfig(batch_size=100, max_epochs=3)
    # Epoch 0 writes best.ckpt and last.ckpt; the disk fills on epoch 1's best.ckpt.
    monkeypatch.setattr(training.torch, "save", _disk_fills(2)(torch.save))
    with pytest.raises(DetlearnError, match=r"best\.ckpt: disk full") as err:
        training.fit(flow(), train_set, val_set, cfg, tmp_path, progress=False)
    assert len(str(err.value).splitlines()) == 1
    assert not _temp_files(tmp_path) and not (tmp_path / "model.safetensors").exists()
    assert {p.name for p in _final_files(tmp_path / "checkpoints")} == {"best.ckpt", "last.ckpt"}
    monkeypatch.undo()
    resumed = training.fit(flow(), train_set, val_set, cfg, tmp_path, resume=True, progress=False)
    assert resumed.epochs == 3


def test_weights_on_a_full_disk_are_one_line(tmp_path, monkeypatch):
    """safetensors raises its own error type for I/O errors, which the command line printed as
    a traceback."""
    import safetensors

    from detlearn.config import FlowConfig
    from detlearn.models import ConditionalFlow, save_model

    def full(*args: object, **kwargs: object) -> None:
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    flow = ConditionalFlow(1, 1, FlowConfig(hidden=[8], transforms=1, bins=4))
    with pytest.raises(DetlearnError, match=r"model\.safetensors: disk full"):
        save_model(flow, tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_figure_on_a_full_disk_is_one_line_and_leaves_no_half_png(tmp_path, monkeypatch):
    """Figures went straight to their final name: a kill or a full disk left half a PNG."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from detlearn.plots.style import save

    fig = plt.figure()
    monkeypatch.setattr(Figure, "savefig", _disk_fills(0)(Figure.savefig))
    with pytest.raises(DetlearnError, match=r"loss\.png: disk full"):
        save(fig, tmp_path / "loss.png")
    plt.close(fig)
    assert not list(tmp_path.iterdir())


# --- 5. a dask worker killed ---------------------------------------------------------------


def test_a_dask_worker_killed_mid_prepare_is_retried_and_the_dataset_is_whole(tmp_path):
    """One of the LocalCluster's two worker processes is killed once the first shards are
    done: dask reruns its work elsewhere and the dataset equals a serial one."""
    pytest.importorskip("distributed", reason="dask extra not installed (detlearn[dask])")
    files = [str(write_flat(tmp_path / f"f{i}.root", n=2000, seed=i)) for i in range(2)]
    config = flat_config(tmp_path, files, step_size=40)
    out, shards = tmp_path / "dask", tmp_path / "dask" / "shards"
    before = set(_family(os.getpid()))
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + DEADLINE
        while _count(shards, "*.done.json") < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        # A worker process is one of this job's new processes that holds a shard's work.
        new = [pid for pid in _family(os.getpid()) if pid not in before]
        workers = [pid for pid in new if _is_dask_worker(pid)]
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])

    watcher = threading.Thread(target=kill_one_worker, daemon=True)
    watcher.start()
    cfg = load_config(config, {"executor": {"kind": "dask", "workers": 2}})
    summary = prepare(cfg, out, progress=False)
    watcher.join()
    assert killed, "no dask worker process was found to kill"
    assert summary.shards == 100 and not summary.failed
    prepare(load_config(config), tmp_path / "serial", progress=False)
    assert _shards(out) == _shards(tmp_path / "serial")
    assert not _temp_files(out)


def _is_dask_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "spawn_main" in cmdline  # dask starts its workers with multiprocessing's spawn


# --- 6. folders holding older files --------------------------------------------------------


def test_simulate_refuses_a_folder_with_root_files_it_would_not_write(tmp_path, runner):
    out = tmp_path / "sim"
    out.mkdir()
    write_flat(out / "mine.root", n=10)
    args = ["simulate", "klm-timing", "-o", str(out), "-n", "200", "--set=events_per_file=100"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert "mine.root" in refused.output and "no detlearn provenance" in refused.output
    assert sorted(p.name for p in out.iterdir()) == ["mine.root"]

    (out / "mine.root").unlink()
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0  # its own files: written again
    other_seed = runner.invoke(app, [*args, "--seed", "1"])
    assert other_seed.exit_code == 2 and "seed 0, not 1" in other_seed.output
    other_options = runner.invoke(app, [*args, "--set=mode=wls"])
    assert other_options.exit_code == 2 and "simulated with mode=" in other_options.output
    fewer = runner.invoke(app, [*args[:5], "100", args[6]])
    assert fewer.exit_code == 2 and "klm_0001.edm4hep.root: left from an earlier" in fewer.output


def test_the_demo_refuses_a_sim_folder_holding_other_root_files(tmp_path):
    write_flat(tmp_path / "sim" / "old.root", n=10)
    with pytest.raises(DetlearnError, match=r"old\.root: has no detlearn provenance"):
        run_recipe("klm-timing", tmp_path, 100, 1, KLM_TINY, console=Console(quiet=True))
    assert not (tmp_path / "dataset").exists()


def test_sample_refuses_to_overwrite_a_file_unless_forced(klm, tmp_path, runner):
    out = tmp_path / "s.parquet"
    args = ["sample", str(klm / "run"), "-c", "z=0,theta=1.4,p=2", "-n", "10", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    written = out.read_bytes()
    again = runner.invoke(app, [*args[:-1], str(out), "--seed", "1"])
    assert again.exit_code == 2 and len(again.output.strip().splitlines()) == 1
    assert "s.parquet: exists; pass --force" in again.output and out.read_bytes() == written
    forced = runner.invoke(app, [*args, "--seed", "1", "--force"])
    assert forced.exit_code == 0 and out.read_bytes() != written
