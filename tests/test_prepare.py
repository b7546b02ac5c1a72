"""prepare: manifest, resume after SIGKILL, executors, and every bad-input case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash
from conftest import flat_config, write_flat

from detlearn.cli import app
from detlearn.errors import DetlearnError
from detlearn.io.dataset import GROUP_COLUMN, Dataset
from detlearn.io.splits import group_hash
from detlearn.prepare import prepare
from detlearn.recipes import load_config


def _tables(root):
    manifest = json.loads((root / "manifest.json").read_text())
    return {s["file"]: pq.read_table(root / s["file"]) for s in manifest["shards"]}


def test_manifest_records_schema_shards_and_sources(tmp_path):
    files = [str(write_flat(tmp_path / f"f{i}.root", n=600, seed=i)) for i in range(2)]
    cfg = load_config(flat_config(tmp_path, files))
    summary = prepare(cfg, tmp_path / "ds", progress=False)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert summary.rows == 1200 and summary.shards == 6 and summary.files == 2
    cols = manifest["columns"]
    assert cols["p"] == {
        "role": "context",
        "unit": "GeV",
        "dtype": "float64",
        "lower": None,
        "upper": None,
    }
    assert cols["theta"]["role"] == "target" and cols["event"]["role"] == "group"
    shard = manifest["shards"][0]
    assert shard["source"]["path"] == files[0] and shard["source"]["size"] > 0
    assert (shard["entry_start"], shard["entry_stop"], shard["rows"]) == (0, 250, 250)
    stored = (tmp_path / "ds" / shard["file"]).read_bytes()
    assert shard["checksum"] == f"xxh3:{xxhash.xxh3_64_hexdigest(stored)}"  # as it lies now
    assert manifest["config_hash"] and manifest["detlearn_version"]
    ds = Dataset.open(tmp_path / "ds")
    p = ds.load(["p"])["p"]
    assert p.shape == (1200,) and (p > 0).all()
    # The split hash is not stored but computed on loading, from the file name and event id.
    assert GROUP_COLUMN not in pq.read_schema(tmp_path / "ds" / shard["file"]).names
    both = ds.load(["event", GROUP_COLUMN])
    first = manifest["shards"][0]["rows"]
    expected = group_hash(Path(files[0]).name, both["event"][:first])
    np.testing.assert_array_equal(both[GROUP_COLUMN][:first], expected)


def test_values_equal_a_direct_numpy_computation(tmp_path):
    import uproot

    path = write_flat(tmp_path / "f.root", n=300)
    prepare(load_config(flat_config(tmp_path, [str(path)])), tmp_path / "ds", progress=False)
    got = Dataset.open(tmp_path / "ds").load(["theta", "event"])
    raw = uproot.open(path)["Events"].arrays(["px", "py", "pz"], library="np")
    theta = np.arccos(raw["pz"] / np.sqrt(raw["px"] ** 2 + raw["py"] ** 2 + raw["pz"] ** 2))
    np.testing.assert_allclose(got["theta"], theta[got["event"]])
    assert (np.sort(got["event"]) == np.arange(300)).all()


def test_selection_and_split_by_event(tmp_path):
    path = write_flat(tmp_path / "f.root", n=2000)
    cfg = load_config(flat_config(tmp_path, [str(path)], selection="region == 1"))
    prepare(cfg, tmp_path / "ds", progress=False)
    ds = Dataset.open(tmp_path / "ds")
    parts = {s: ds.load(["event"], split=s)["event"] for s in ("train", "val", "test")}
    assert sum(len(v) for v in parts.values()) == ds.rows < 2000
    assert not set(parts["train"]) & set(parts["test"])
    assert abs(len(parts["train"]) / ds.rows - 0.8) < 5 * np.sqrt(0.16 / ds.rows)


def test_rerun_skips_complete_shards_and_redoes_corrupt_or_missing(tmp_path):
    path = write_flat(tmp_path / "f.root", n=1000)
    cfg = load_config(flat_config(tmp_path, [str(path)]))
    prepare(cfg, tmp_path / "ds", progress=False)
    before = _tables(tmp_path / "ds")
    assert prepare(cfg, tmp_path / "ds", progress=False).skipped == 4
    shards = sorted((tmp_path / "ds" / "shards").glob("*.parquet"))
    shards[0].write_bytes(shards[0].read_bytes()[:-10] + b"0123456789")  # corrupt
    shards[1].unlink()  # missing
    summary = prepare(cfg, tmp_path / "ds", progress=False)
    assert summary.skipped == 2
    assert _tables(tmp_path / "ds") == before
    assert prepare(cfg, tmp_path / "ds", force=True, progress=False).skipped == 0


def test_changed_config_redoes_shards(tmp_path):
    path = write_flat(tmp_path / "f.root", n=500)
    prepare(load_config(flat_config(tmp_path, [str(path)])), tmp_path / "ds", progress=False)
    cfg2 = load_config(flat_config(tmp_path, [str(path)], selection="region == 0"))
    assert prepare(cfg2, tmp_path / "ds", progress=False).skipped == 0


def test_sigkill_half_way_then_rerun_equals_uninterrupted(tmp_path):
    files = [str(write_flat(tmp_path / f"f{i}.root", n=6000, seed=i)) for i in range(2)]
    config = flat_config(tmp_path, files, step_size=40)
    cmd = [
        sys.executable,
        "-m",
        "detlearn.cli",
        "prepare",
        str(config),
        "--out",
        str(tmp_path / "a"),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = tmp_path / "a" / "shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("*.done.json"))) < 30 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done_at_kill = len(list(shards.glob("*.done.json")))
    assert 30 <= done_at_kill < 300, "the job must be killed half-way"
    assert not (tmp_path / "a" / "manifest.json").exists()

    cfg = load_config(config)
    resumed = prepare(cfg, tmp_path / "a", progress=False)
    assert resumed.skipped >= done_at_kill - 1 and resumed.shards == 300
    prepare(cfg, tmp_path / "b", progress=False)
    a, b = _tables(tmp_path / "a"), _tables(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)
    assert not list(shards.glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["local", "dask"])
def test_parallel_executors_give_the_same_dataset(tmp_path, kind):
    if kind == "dask":
        pytest.importorskip("distributed", reason="dask extra not installed")
    files = [str(write_flat(tmp_path / f"f{i}.root", n=500, seed=i)) for i in range(2)]
    config = flat_config(tmp_path, files)
    prepare(load_config(config), tmp_path / "serial", progress=False)
    cfg = load_config(config, {"executor": {"kind": kind, "workers": 2}})
    prepare(cfg, tmp_path / "parallel", progress=False)
    a, b = _tables(tmp_path / "serial"), _tables(tmp_path / "parallel")
    assert a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)


def test_script_without_a_main_guard_is_told_why_the_workers_died(tmp_path):
    # The fork server imports the script as a module, so its unguarded prepare() runs there too.
    files = [str(write_flat(tmp_path / f"f{i}.root", n=500, seed=i)) for i in range(2)]
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from detlearn.recipes import load_config\n"
        "from detlearn.prepare import prepare\n"
        f"cfg = load_config({str(flat_config(tmp_path, files))!r}, "
        "{'executor': {'workers': 2}})\n"
        f"prepare(cfg, {str(tmp_path / 'ds')!r}, progress=False)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert 'if __name__ == "__main__":' in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_nonfinite_rows_dropped_and_counted(tmp_path):
    path = write_flat(tmp_path / "f.root", n=500, nan_rows=7)
    summary = prepare(
        load_config(flat_config(tmp_path, [str(path)])), tmp_path / "ds", progress=False
    )
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert summary.rows == 493
    assert manifest["shards"][0]["nonfinite_dropped"] == {"p": 7, "theta": 7}


def _cli(runner, *args):
    result = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines


def test_cli_nonfinite_error_names_file_and_column(tmp_path, runner):
    path = write_flat(tmp_path / "f.root", n=500, nan_rows=3)
    config = flat_config(tmp_path, [str(path)], on_nonfinite="error")
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 2 and len(lines) == 1
    # The column says where it was defined: the user's config.
    assert f"f.root: column 'p' from {config} has 3 non-finite values" in lines[0]
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_cli_jagged_column_where_flat_expected(tmp_path, runner):
    path = write_flat(tmp_path / "f.root")
    config = flat_config(
        tmp_path, [str(path)], columns={"e": {"expr": "hitE * 2", "role": "target"}}
    )
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 2 and len(lines) == 1
    assert "'e'" in lines[0] and "jagged" in lines[0] and "f.root" in lines[0]


def test_cli_expression_that_does_not_parse(tmp_path, runner):
    path = write_flat(tmp_path / "f.root")
    config = flat_config(
        tmp_path, [str(path)], columns={"e": {"expr": "px +* 2", "role": "target"}}
    )
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 2 and len(lines) == 1 and "px +* 2" in lines[0]


def test_cli_missing_branch_lists_closest(tmp_path, runner):
    path = write_flat(tmp_path / "f.root")
    config = flat_config(
        tmp_path, [str(path)], columns={"e": {"expr": "sqrt(pxx)", "role": "target"}}
    )
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 2 and len(lines) == 1 and "pxx" in lines[0] and "px" in lines[0]


def test_cli_missing_file_exit_2(tmp_path, runner):
    config = flat_config(tmp_path, [str(tmp_path / "gone.root")])
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert (code, len(lines)) == (2, 1) and "gone.root: file not found" in lines[0]


def test_cli_output_folder_that_cannot_be_made_exit_2(tmp_path, runner):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = flat_config(tmp_path, [str(write_flat(tmp_path / "f.root", n=10))])
    code, lines = _cli(runner, "prepare", config, "--out", blocker / "ds", "--quiet")
    assert (code, len(lines)) == (2, 1) and str(blocker) in lines[0]
    code, lines = _cli(runner, "simulate", "hcal-energy", "--out", blocker / "sim", "-n", 10)
    assert (code, len(lines)) == (2, 1) and str(blocker / "sim") in lines[0]


def test_on_error_skip_lists_failed_and_completes(tmp_path, runner):
    good = write_flat(tmp_path / "good.root", n=300)
    bad = tmp_path / "bad.root"
    bad.write_bytes(good.read_bytes()[:2000])
    config = flat_config(tmp_path, [str(good), str(bad)], on_error="skip")
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 0, lines
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["rows"] == 300
    assert (
        manifest["failed"][0]["path"] == str(bad) and "truncated" in manifest["failed"][0]["reason"]
    )


def test_default_stops_before_writing_the_manifest(tmp_path):
    good = write_flat(tmp_path / "good.root", n=300)
    bad = tmp_path / "bad.root"
    bad.write_text("not root")
    with pytest.raises(DetlearnError, match=r"bad\.root: not a ROOT file"):
        prepare(
            load_config(flat_config(tmp_path, [str(good), str(bad)])),
            tmp_path / "ds",
            progress=False,
        )
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_selection_that_leaves_nothing(tmp_path):
    path = write_flat(tmp_path / "f.root", n=300)
    cfg = load_config(flat_config(tmp_path, [str(path)], selection="region > 5"))
    with pytest.raises(DetlearnError, match=r"300 entries read, 0 rows after selection"):
        prepare(cfg, tmp_path / "ds", progress=False)
