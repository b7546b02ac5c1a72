"""``train --out`` and ``export --out`` write only into a new or empty folder or an artifact of
their own kind: a folder of other files, a file, or a place that cannot be written is refused
in one line naming the path, before any work; re-training and re-exporting still work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import flat_config, write_flat
from typer.testing import CliRunner

from detlearn.cli import app

#: A tiny flow, one epoch.
TINY = [
    "--set=model.flow.transforms=1",
    "--set=model.flow.bins=4",
    "--set=model.flow.hidden=[8]",
    "--set=training.batch_size=200",
    "--set=training.max_epochs=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prepared flat dataset, its config, and a run trained on it."""
    tmp = tmp_path_factory.mktemp("flat")
    path = write_flat(tmp / "f.root", n=1000, seed=3)
    config = flat_config(tmp, [str(path)])
    runner = CliRunner()
    for args in (["prepare", config, "--out", tmp / "ds", "--quiet"], _train(config, tmp)):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return tmp


def _train(config: Path, tmp: Path, out: Path | None = None) -> list[object]:
    return ["train", config, "-d", tmp / "ds", "-o", out or tmp / "run", "--quiet", *TINY]


def _cli(runner, *args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A folder nobody may write into: read-only, and (root writes anyway) os.access says so."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    access = os.access

    def denied(path, mode, **kwargs):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", denied)
    yield folder
    folder.chmod(0o755)


# --- train ------------------------------------------------------------------------------------


def test_train_refuses_a_folder_of_other_files_before_training(trained, tmp_path, runner):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    (theirs / "results").mkdir()
    code, lines = _cli(runner, *_train(trained / "run.yaml", trained, theirs))
    assert code == 2 and len(lines) == 1, lines
    assert f"{theirs}: holds files but is no detlearn run folder (no run.json)" in lines[0]
    assert _snapshot(theirs) == {"notes.txt": b"mine"} and not any((theirs / "results").iterdir())


def test_train_refuses_a_dataset_folder(trained, runner):
    before = _snapshot(trained / "ds")
    code, lines = _cli(runner, *_train(trained / "run.yaml", trained, trained / "ds"))
    assert code == 2 and len(lines) == 1 and "no detlearn run folder" in lines[0]
    assert _snapshot(trained / "ds") == before


def test_train_refuses_a_file(trained, tmp_path, runner):
    target = tmp_path / "taken"
    target.write_text("a user's file")
    code, lines = _cli(runner, *_train(trained / "run.yaml", trained, target))
    assert code == 2 and len(lines) == 1
    assert f"{target}: --out is a file, not a run folder" in lines[0]
    assert target.read_text() == "a user's file"


def test_train_refuses_a_folder_it_cannot_write(trained, locked, runner):
    out = locked / "new" / "run"
    code, lines = _cli(runner, *_train(trained / "run.yaml", trained, out))
    assert code == 2 and len(lines) == 1, lines
    assert f"{out}: --out is not writable (its nearest existing parent {locked})" in lines[0]
    assert not any(locked.iterdir())


def test_train_into_its_own_run_folder_again_or_a_stopped_one_still_works(
    trained, tmp_path, runner
):
    run = tmp_path / "run"
    for _ in range(2):  # a new folder, then the run it holds
        code, lines = _cli(runner, *_train(trained / "run.yaml", trained, run))
        assert code == 0, lines
    stopped = tmp_path / "stopped"  # a training killed before its run.json
    (stopped / "flow" / "checkpoints").mkdir(parents=True)
    code, lines = _cli(runner, *_train(trained / "run.yaml", trained, stopped))
    assert code == 0 and (stopped / "run.json").is_file(), lines
    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines = _cli(runner, *_train(trained / "run.yaml", trained, empty))
    assert code == 0, lines


# --- export -----------------------------------------------------------------------------------


def test_export_refuses_a_folder_that_is_no_export(trained, tmp_path, runner):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.onnx").write_bytes(b"their graph")
    (theirs / "notes.json").write_text('{"mine": 1}')
    code, lines = _cli(runner, "export", trained / "run", "--out", theirs)
    assert code == 2 and len(lines) == 1, lines
    assert f"{theirs}: holds files but is no detlearn export folder" in lines[0]
    assert _snapshot(theirs) == {"model.onnx": b"their graph", "notes.json": b'{"mine": 1}'}
    before = _snapshot(trained / "run")  # the run folder itself is no export folder
    code, lines = _cli(runner, "export", trained / "run", "--out", trained / "run")
    assert code == 2 and "no detlearn export folder" in lines[0]
    assert _snapshot(trained / "run") == before


def test_export_refuses_a_file(trained, tmp_path, runner):
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"a user's file")
    code, lines = _cli(runner, "export", trained / "run", "--out", target)
    assert code == 2 and len(lines) == 1
    assert f"{target}: --out is a file, not an export folder" in lines[0]
    assert target.read_bytes() == b"a user's file"


def test_export_refuses_a_folder_it_cannot_write(trained, locked, runner):
    code, lines = _cli(runner, "export", trained / "run", "--out", locked)
    assert code == 2 and len(lines) == 1, lines
    assert f"{locked}: --out is not writable; give it a folder you can write" in lines[0]
    assert not any(locked.iterdir())


def test_export_into_its_own_folder_again_or_a_stopped_one_still_works(trained, tmp_path, runner):
    out = tmp_path / "export"
    for _ in range(2):  # a new folder, then the export it holds
        code, lines = _cli(runner, "export", trained / "run", "--out", out)
        assert code == 0, lines
    stopped = tmp_path / "stopped"  # an export killed before its first sidecar
    stopped.mkdir()
    (stopped / "sample.onnx").write_bytes(b"half a graph")
    (stopped / ".log_prob.onnx.1234.tmp").write_bytes(b"")
    code, lines = _cli(runner, "export", trained / "run", "--out", stopped)
    assert code == 0 and (stopped / "sample.json").is_file(), lines
