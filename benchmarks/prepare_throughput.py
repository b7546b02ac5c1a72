"""Claim: `prepare` costs at most 1.5x a plain uproot read of the same branches, and 2 local
workers are at least 1.7x faster than 1.

Generates ~300 MB of ZLIB-compressed flat ROOT files (cached in benchmarks/.data), then times,
back to back in this process:
  1. a plain uproot read of the branches the config needs, in the same entry ranges;
  2. `prepare` with 1 worker (in-process), which reads, evaluates the column expressions,
     hashes the event ids and writes zstd parquet shards;
  3. `prepare` with 2 worker processes.

Run: .venv/bin/python benchmarks/prepare_throughput.py [--mb 300]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import uproot

from detlearn.config import validate_config
from detlearn.prepare import prepare

DATA = Path(__file__).parent / ".data" / "prepare"
BRANCHES = ["px", "py", "pz", "E", "x", "y", "z", "t"]
COLUMNS = {
    "p": {"expr": "sqrt(px**2 + py**2 + pz**2)", "role": "context"},
    "theta": {"expr": "arccos(pz / sqrt(px**2 + py**2 + pz**2))", "role": "context"},
    "r": {"expr": "hypot(x, y)", "role": "context"},
    "z": {"expr": "z", "role": "context"},
    "m2": {"expr": "E**2 - px**2 - py**2 - pz**2", "role": "observer"},
    "t": {"expr": "t", "role": "target"},
}
STEP = 500_000


def make_files(total_mb: int, n_files: int = 4) -> list[str]:
    per_file = int(total_mb * 1e6 / 8 / len(BRANCHES) / n_files)
    DATA.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        path = DATA / f"flat_{total_mb}mb_{i}.root"
        if not path.exists():
            rng = np.random.default_rng(i)
            tmp = path.with_suffix(".tmp")
            with uproot.recreate(tmp, compression=uproot.ZLIB(1)) as f:
                f.mktree("Events", {b: "f8" for b in BRANCHES})
                for start in range(0, per_file, STEP):
                    n = min(STEP, per_file - start)
                    cols = {b: rng.normal(size=n) for b in BRANCHES}
                    cols["E"] = np.abs(cols["E"]) + 3.0
                    f["Events"].extend(cols)
            tmp.rename(path)
        paths.append(str(path))
    return paths


def plain_read(paths: list[str]) -> int:
    rows = 0
    for path in paths:
        tree = uproot.open(path)["Events"]
        for start in range(0, tree.num_entries, STEP):
            arrays = tree.arrays(BRANCHES, entry_start=start, entry_stop=start + STEP, library="np")
            rows += len(arrays["px"])
    return rows


def timed_prepare(paths: list[str], workers: int) -> tuple[float, int]:
    cfg = validate_config(
        {
            "data": {"inputs": paths, "columns": COLUMNS, "step_size": STEP},
            "executor": {"workers": workers},
        }
    )
    out = Path(tempfile.mkdtemp(prefix="detlearn-bench-"))
    try:
        t0 = time.perf_counter()
        summary = prepare(cfg, out, progress=False)
        return time.perf_counter() - t0, summary.rows
    finally:
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="size of the generated input, MB")
    args = parser.parse_args()
    paths = make_files(args.mb)
    size = sum(Path(p).stat().st_size for p in paths) / 1e6
    t0 = time.perf_counter()
    rows = plain_read(paths)
    t_read = time.perf_counter() - t0
    t1, rows1 = timed_prepare(paths, workers=1)
    t2, rows2 = timed_prepare(paths, workers=2)
    assert rows == rows1 == rows2
    print(f"input: {len(paths)} files, {size:.0f} MB on disk, {rows:,} rows")
    print(f"plain uproot read : {t_read:6.2f} s  {rows / t_read:12,.0f} rows/s")
    print(f"prepare, 1 worker : {t1:6.2f} s  {rows / t1:12,.0f} rows/s  ratio to read {t1 / t_read:.2f} (target <= 1.5)")
    print(f"prepare, 2 workers: {t2:6.2f} s  {rows / t2:12,.0f} rows/s  speed-up {t1 / t2:.2f}x (target >= 1.7)")


if __name__ == "__main__":
    main()
