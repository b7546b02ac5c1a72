"""Nothing silent, nothing garbled: what prepare tells about rows it left out and inputs that
failed, user text printed as it is, and no empty folder after a failure."""

from __future__ import annotations

from conftest import flat_config, write_flat

from detlearn.cli import app


def _cli(runner, *args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_the_summary_counts_rows_left_out_by_selection_and_as_non_finite(tmp_path, runner):
    path = write_flat(tmp_path / "f.root", n=500, nan_rows=7)
    config = flat_config(tmp_path, [str(path)], selection="region == 1")
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 0
    dropped = [line for line in lines if line.startswith("dropped:")]
    assert len(dropped) == 1
    assert "selection kept" in dropped[0] and "of 500 entries" in dropped[0]
    assert "non-finite rows dropped:" in dropped[0] and "p " in dropped[0]


def test_when_every_file_fails_the_error_says_so_with_the_reasons(tmp_path, runner):
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"not a root file at all")
    config = flat_config(tmp_path, [str(bad)], on_error="skip")
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 2 and len(lines) == 1
    assert "every input file failed (1)" in lines[0] and "bad.root: not a ROOT file" in lines[0]
    assert not (tmp_path / "ds").exists()  # no empty dataset folder left behind


def test_out_pointing_at_a_file_is_a_one_line_error(tmp_path, runner):
    path = write_flat(tmp_path / "f.root", n=100)
    target = tmp_path / "taken"
    target.write_text("a user's file")
    code, lines = _cli(runner, "prepare", flat_config(tmp_path, [str(path)]), "--out", target)
    assert code == 2 and len(lines) == 1 and "is a file, not a dataset folder" in lines[0]
    assert target.read_text() == "a user's file"


def test_out_onto_a_folder_that_is_not_a_dataset_touches_nothing(tmp_path, runner):
    path = write_flat(tmp_path / "f.root", n=100)
    config = flat_config(tmp_path, [str(path)])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "manifest.json").write_text('{"app": "not detlearn"}')
    code, lines = _cli(runner, "prepare", config, "--out", theirs, "--quiet")
    assert code == 2 and len(lines) == 1 and "not a detlearn dataset's manifest" in lines[0]
    (theirs / "manifest.json").unlink()
    (theirs / "notes.txt").write_text("mine")
    code, lines = _cli(runner, "prepare", config, "--out", theirs, "--quiet")
    assert code == 2 and len(lines) == 1 and "is no detlearn dataset" in lines[0]
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "shards").symlink_to(theirs)
    code, lines = _cli(runner, "prepare", config, "--out", linked, "--quiet")
    assert code == 2 and "a symbolic link" in lines[0]
    # A dataset folder is prepared into again (its shards reused).
    assert _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")[0] == 0
    assert _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")[0] == 0


def test_markup_like_user_text_is_printed_as_it_is(tmp_path, runner):
    path = write_flat(tmp_path / "f.root", n=100)
    config = flat_config(tmp_path, [str(path)], selection="px[/x] > 0")
    code, lines = _cli(runner, "prepare", config, "--out", tmp_path / "ds", "--quiet")
    assert code == 2 and len(lines) == 1
    assert "px[/x]" in lines[0]
